"""A small CNN classifier and its training loop.

Used to judge synthetic data (train on synthetic, evaluate on real *validation*
images) and, through its penultimate layer, as the in-domain feature extractor for
Fréchet distances. GroupNorm rather than BatchNorm so that a DP variant is possible.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import classification_metrics


class SmallCNN(nn.Module):
    def __init__(self, *, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(  # (B, C, S, S) -> (B, 4w)
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.GroupNorm(8, 4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (N, K) on the CPU; batches go to the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([F.softmax(model(x[i:i + batch_size].to(device)), dim=1).cpu()
                      for i in range(0, len(x), batch_size)]).numpy()


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, epochs: int = 10,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                     val: tuple[torch.Tensor, torch.Tensor] | None = None, monitor: str = "auc",
                     patience: int | None = None, device: str | torch.device = "cpu") -> tuple[SmallCNN, dict]:
    """Adam on cross-entropy; with ``val``, keep the epoch with the best ``monitor`` on it
    (``auc``: macro-AUC, higher is better; ``loss``: cross-entropy, lower is better) and, with
    ``patience``, stop after that many epochs without improvement. Callers pass validation data
    (or a held-out part of the training data), never test."""
    if monitor not in ("auc", "loss"):
        raise ValueError(f"monitor must be 'auc' or 'loss', not {monitor!r}")
    torch.manual_seed(seed)
    device = torch.device(device)
    model = SmallCNN(channels=x.shape[1], num_classes=num_classes).to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, history = -np.inf, None, 0, []
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            idx = idx.to(device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is None:
            continue
        proba = predict_proba(model, val[0])
        scores = classification_metrics(val[1].numpy(), proba)
        scores["loss"] = float(F.nll_loss(torch.log(torch.from_numpy(proba).clamp_min(1e-12)), val[1].cpu()))
        history.append(scores)
        score = scores["auc"] if monitor == "auc" else -scores["loss"]
        if score > best:
            best, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch + 1
        elif patience is not None and epoch + 1 - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, {"val_history": history, "best_epoch": best_epoch, "epochs_run": len(history) or epochs,
                   "best_val_auc": max((h["auc"] for h in history), default=None) if monitor == "auc" else None}
