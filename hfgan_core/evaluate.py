"""Judge trained generators on held-out *validation* data (never test).

* train-on-synthetic: a classifier trained only on the generators' images, scored on
  real validation images (does each G_i carry the label signal?);
* in-domain Fréchet distance: features from a CNN trained on the real training split.
"""
from __future__ import annotations

import numpy as np
import torch

from .classifier import predict_proba, train_classifier
from .data import MedicalDataset
from .metrics import classification_metrics, crossfit_threshold_accuracy, extract_features, frechet_distance
from .models import Generator


@torch.no_grad()
def synthesize(generators: list[Generator], per_class: int, num_classes: int, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class from every generator, pooled: (n, C, H, W), (n,)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for g in generators:
        g.eval()
        y = torch.arange(num_classes).repeat_interleave(per_class)
        xs.append(g(torch.randn(len(y), g.nz, generator=gen), y))
        ys.append(y)
        g.train()
    return torch.cat(xs), torch.cat(ys)


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


@torch.no_grad()
def images_for_labels(generators: list[Generator], labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic image per label (N, C, H, W) on the CPU; within each class the generators
    take turns, so every generator contributes every class."""
    gen = torch.Generator().manual_seed(seed)
    owner = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        owner[idx] = torch.arange(len(idx)) % len(generators)
    parts = []
    for i, g in enumerate(generators):
        device = next(g.parameters()).device
        g.eval()
        y = labels[owner == i]
        z = torch.randn(len(y), g.nz, generator=gen)
        parts.append((torch.nonzero(owner == i).flatten(), g(z.to(device), y.to(device)).cpu()))
        g.train()
    x = torch.empty(len(labels), *parts[0][1].shape[1:])
    for idx, images in parts:
        x[idx] = images
    return x, labels


def train_on_synthetic(generators: list[Generator], ds: MedicalDataset, *, per_class: int = 1000,
                       epochs: int = 5, seed: int = 0, repeats: int = 3) -> dict[str, float]:
    """Classifiers trained on synthetic images only (``per_class`` images of every class, pooled
    over generators), scored on the real validation split; mean over ``repeats`` synthetic sets
    and classifier seeds, since one small classifier run is noisy. For binary tasks
    ``accuracy_crossfit`` also reports accuracy with a threshold cross-fitted on halves of val."""
    xv, yv = ds.val.tensors()
    runs = []
    for r in range(repeats):
        x, y = synthesize(generators, max(1, per_class // len(generators)), ds.num_classes, seed + 100 * r)
        model, _ = train_classifier(x, y, num_classes=ds.num_classes, epochs=epochs, seed=seed + r)
        proba = predict_proba(model, xv)
        runs.append(classification_metrics(yv.numpy(), proba))
        if ds.num_classes == 2:
            runs[-1]["accuracy_crossfit"] = crossfit_threshold_accuracy(yv.numpy(), proba[:, 1], seed=seed + r)
    scores = {k: float(np.mean([s[k] for s in runs])) for k in runs[0]}
    scores |= {f"{k}_sd": float(np.std([s[k] for s in runs])) for k in runs[0]}
    scores["majority_rate"] = float(np.bincount(yv.numpy()).max() / len(yv))
    return scores


def feature_extractor(ds: MedicalDataset, *, epochs: int = 3, seed: int = 0):
    """In-domain CNN trained on the real training split only."""
    x, y = ds.train.tensors()
    model, _ = train_classifier(x, y, num_classes=ds.num_classes, epochs=epochs, seed=seed)
    return model


def in_domain_fd(extractor, generators: list[Generator], real: torch.Tensor, num_classes: int,
                 per_class: int, seed: int = 0) -> float:
    fake, _ = synthesize(generators, per_class, num_classes, seed)
    return frechet_distance(extract_features(extractor, fake), extract_features(extractor, real))
