"""Classification scores and the Fréchet distance between two feature sets."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from .errors import UserError


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes), macro-F1 and AUC (binary, or macro
    one-vs-rest) from class probabilities (N, K), and how many classes the model ever predicts
    (1 marks a model that collapsed to one class, whatever its accuracy)."""
    y_true = np.asarray(y_true)
    pred = proba.argmax(axis=1)
    k = proba.shape[1]
    present = np.unique(y_true)
    if len(present) < 2:
        auc = float("nan")
    elif k == 2:
        auc = roc_auc_score(y_true, proba[:, 1])
    else:
        auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=np.arange(k))
    return {"accuracy": float(accuracy_score(y_true, pred)), "balanced_accuracy": balanced_accuracy(y_true, pred),
            "predicted_classes": int(len(np.unique(pred))),
            "macro_f1": float(f1_score(y_true, pred, average="macro", labels=np.arange(k), zero_division=0)),
            "auc": float(auc)}


def balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true``: predicting the majority class cannot raise
    it. ``pred`` is (N,) or (models, N); several models are pooled per class, which (each model
    scoring every example) is the mean of their balanced accuracies."""
    y_true, pred = np.asarray(y_true), np.asarray(pred)
    return float(np.mean([np.mean(pred[..., y_true == c] == c) for c in np.unique(y_true)]))


def mix_accuracy(y_true: np.ndarray, pred: np.ndarray, mix: np.ndarray) -> float:
    """Accuracy on a test set whose classes follow ``mix`` (K,): sum_c mix_c * recall_c.
    Under label skew a hospital differs only in its class mix, so this is its expected accuracy
    without splitting the test set further."""
    y_true, pred = np.asarray(y_true), np.asarray(pred)
    recall = np.array([(pred[y_true == c] == c).mean() if (y_true == c).any() else 0.0 for c in range(len(mix))])
    return float(np.dot(np.asarray(mix, dtype=float), recall))


def crossfit_threshold_accuracy(y_true: np.ndarray, score: np.ndarray, seed: int = 0) -> float:
    """Binary accuracy when the decision threshold is tuned on one half of the data and applied
    to the other, both ways (2-fold cross-fitting): the accuracy a small labelled calibration
    set buys, with no example scored by a threshold it helped choose."""
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y_true), dtype=int)
    for c in np.unique(y_true):  # stratified halves
        idx = rng.permutation(np.flatnonzero(y_true == c))
        fold[idx] = np.arange(len(idx)) % 2
    correct = 0
    for f in (0, 1):
        tune, apply = fold != f, fold == f
        cuts = np.unique(score[tune])
        candidates = np.concatenate([[-np.inf], (cuts[1:] + cuts[:-1]) / 2, [np.inf]])  # midpoints
        accs = [((score[tune] > t) == y_true[tune]).mean() for t in candidates]
        t = candidates[int(np.argmax(accs))]
        correct += ((score[apply] > t) == y_true[apply]).sum()
    return float(correct / len(y_true))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to two (N, d) sets."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the FID reference code does
        eps = 1e-6 * np.eye(len(s_a))
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


@torch.no_grad()
def extract_features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.features(x[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(x), batch_size)]).double().numpy()


# ---------------------------------------------------------------------------------------------
# FID and Inception Score through torchmetrics, with any feature module

class _Head(torch.nn.Module):
    """Adapts a classifier with ``features``/``head`` to what torchmetrics calls: features or logits."""

    def __init__(self, model: torch.nn.Module, *, logits: bool) -> None:
        super().__init__()
        self.model, self.logits = model.eval(), logits
        self.num_features = model.head.in_features  # saves torchmetrics a 299 px dummy pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.features(x)
        return self.model.head(f) if self.logits else f


@torch.no_grad()
def fid(extractor: torch.nn.Module, fake: torch.Tensor, real: torch.Tensor, batch_size: int = 512) -> float:
    """Fréchet distance between ``extractor`` features of two image sets (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    device = next(extractor.parameters()).device
    metric = FrechetInceptionDistance(feature=_Head(extractor, logits=False)).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), batch_size):
            metric.update(images[i:i + batch_size].to(device), real=is_real)
    return float(metric.compute())


@torch.no_grad()
def inception_score(extractor: torch.nn.Module, images: torch.Tensor, *, splits: int = 10,
                    seed: int = 0) -> tuple[float, float]:
    """exp(E KL(p(y|x) || p(y))) from the extractor's class logits (torchmetrics): mean, sd over splits."""
    from torchmetrics.image.inception import InceptionScore
    with warnings.catch_warnings():  # "features kept in a buffer": a few thousand 2-5 class logits
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Head(extractor, logits=True), splits=splits)
    device = next(extractor.parameters()).device
    metric = metric.to(device)
    for i in range(0, len(images), 512):
        metric.update(images[i:i + 512].to(device))
    with torch.random.fork_rng(devices=[]):  # compute() permutes the images before splitting
        torch.manual_seed(seed)
        mean, sd = metric.cpu().compute()
    return float(mean), float(sd)


# ---------------------------------------------------------------------------------------------
# Standard (Inception-v3) FID and IS, only when the weights are on disk

INCEPTION_ENV = "HFGAN_INCEPTION_WEIGHTS"


def inception_weights() -> str | None:
    """Path of the standard FID Inception-v3 weights (torch-fidelity's
    ``pt_inception-2015-12-05`` file) from $HFGAN_INCEPTION_WEIGHTS, or None when unset."""
    path = os.environ.get(INCEPTION_ENV)
    if not path:
        return None
    if not Path(path).is_file():
        raise UserError(f"{INCEPTION_ENV}={path}: no such file; point it at the FID Inception-v3 weights "
                        "(pt_inception-2015-12-05-6726825d.pth) or unset it")
    return path


def _rgb01(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images with 1 or 3 channels -> 3-channel [0, 1], what torchmetrics' Inception expects."""
    x = (x.clamp(-1, 1) + 1) / 2
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def standard_fid_is(fake: torch.Tensor, real: torch.Tensor, weights: str, *, seed: int = 0,
                    device: str = "cpu") -> dict[str, float]:
    """FID and IS with the standard Inception-v3 (images resized to 299 px by torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore
    fid_metric = FrechetInceptionDistance(feature=2048, normalize=True,
                                          feature_extractor_weights_path=weights).to(device)
    logits = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"],
                                feature_extractor_weights_path=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        is_metric = InceptionScore(feature=logits, normalize=True).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), 100):
            batch = _rgb01(images[i:i + 100].to(device))
            fid_metric.update(batch, real=is_real)
            if not is_real:
                is_metric.update(batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        is_mean, is_sd = is_metric.cpu().compute()
    return {"fid_inception": float(fid_metric.compute()), "inception_score_inception": float(is_mean),
            "inception_score_inception_sd": float(is_sd)}
