"""Are the generators any good? Numbers on the validation split (never test), per class.

* **TSTR** (train on synthetic, test on real): a SmallCNN trained to convergence on pooled
  synthetic images with balanced labels (epochs chosen on a held-out tenth of the *synthetic*
  set), scored on the real validation split: AUC, balanced accuracy, macro-F1. The same
  procedure on the real training split gives the ceiling ("real training data").
* **CAS** (classification accuracy score of the fakes): the in-domain extractor's accuracy on
  fakes with respect to the label each was drawn for.
* **FID**, overall and per class, in the in-domain extractor's feature space: fakes against the
  real training images, with as many fakes as there are validation images of that class, so
  that the reference "real validation vs real training" is computed the same way (FID depends
  on sample size); averaged over a few draws of fakes.
* **Precision / recall / density / coverage** per class (Kynkäänniemi et al. 2019; Naeem et al.
  2020; k = 5 nearest neighbours) in the same feature space. The real manifold is one random half
  of the class's training images; the fakes number as many; the reference is the *other* half of
  the real training images (real against real, equal sizes). Low recall/coverage is mode collapse.
* **Copy check**: the fraction of fakes whose nearest training image (pixel L2) is closer than
  the nearest training image of 95 % (or 50 %) of validation images: generators that copied
  training images would score near 1.

``untrained`` generators (same architecture, fresh weights) are the floor of every number.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from .classifier import predict_proba, train_classifier
from .data import MedicalDataset
from .metrics import classification_metrics, extract_features, frechet_distance
from .models import Generator
from .synthesis import images_for_labels, synthesize


@dataclass
class QualityConfig:
    per_class: int = 1000  # pooled synthetic images per class for TSTR and CAS
    tstr_max_epochs: int = 60
    tstr_patience: int = 6
    tstr_holdout: float = 0.1  # of the synthetic set, for choosing the epoch
    fid_draws: int = 3  # draws of fakes averaged for FID (sample size matched to validation)
    k: int = 5  # neighbours for precision / recall / density / coverage
    max_manifold: int = 1000  # cap on real (and fake) points per class for the k-NN metrics
    seed: int = 0
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------
# TSTR and CAS

def _holdout_split(y: torch.Tensor, frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, holdout) index split."""
    rng = np.random.default_rng(seed)
    hold = []
    for c in torch.unique(y).tolist():
        idx = rng.permutation(np.flatnonzero(y.numpy() == c))
        hold.append(idx[:max(1, int(round(frac * len(idx))))])
    mask = np.zeros(len(y), dtype=bool)
    mask[np.concatenate(hold)] = True
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


def tstr(x: torch.Tensor, y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor], *, num_classes: int,
         config: QualityConfig) -> dict:
    """Train a classifier on (x, y) to convergence (epoch chosen on a held-out part of (x, y)),
    score it on the real validation split."""
    tr, ho = _holdout_split(y, config.tstr_holdout, config.seed)
    model, log = train_classifier(x[tr], y[tr], num_classes=num_classes, epochs=config.tstr_max_epochs,
                                  seed=config.seed, val=(x[ho], y[ho]), monitor="loss",
                                  patience=config.tstr_patience, device=config.device)
    proba = predict_proba(model, val[0])
    scores = classification_metrics(val[1].numpy(), proba)
    scores["balanced_accuracy"] = float(balanced_accuracy_score(val[1].numpy(), proba.argmax(1)))
    return scores | {"epochs": log["best_epoch"], "epochs_run": log["epochs_run"], "train_images": len(tr)}


def cas(extractor: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The extractor's accuracy on images w.r.t. their intended labels, overall and per class."""
    pred = predict_proba(extractor, x).argmax(1)
    y = y.numpy()
    return {"cas": float((pred == y).mean()),
            "cas_per_class": [float((pred[y == c] == c).mean()) for c in range(int(y.max()) + 1)]}


# ---------------------------------------------------------------------------------------------
# Precision, recall, density, coverage

def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set."""
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself (0)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020)
    of ``fake`` against ``real`` feature sets (N, d) and (M, d)."""
    real, fake = real.double(), fake.double()
    k = min(k, len(real) - 1, len(fake) - 1)
    if k < 1:
        return {"precision": math.nan, "recall": math.nan, "density": math.nan, "coverage": math.nan}
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    d = torch.cdist(real, fake)  # (N, M)
    inside_real = d <= r_real[:, None]  # fake j lies in real i's ball
    return {"precision": float(inside_real.any(dim=0).double().mean()),
            "recall": float((d <= r_fake[None, :]).any(dim=1).double().mean()),
            "density": float(inside_real.double().sum() / (k * len(fake))),
            "coverage": float((d.min(dim=1).values <= r_real).double().mean())}


# ---------------------------------------------------------------------------------------------
# The report

def _features(extractor: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return extract_features(extractor, x)


def _fid_matched(extractor, generators, ds: MedicalDataset, real_feats: np.ndarray, real_y: np.ndarray,
                 config: QualityConfig) -> dict:
    """FID of fakes drawn with the validation split's label counts, overall and per class."""
    vy = torch.from_numpy(ds.val.labels)
    overall, per_class = [], []
    for draw in range(config.fid_draws):
        x, y = images_for_labels(generators, vy, config.seed + 10 + draw)
        f = _features(extractor, x)
        overall.append(frechet_distance(f, real_feats))
        per_class.append([_fid_or_nan(f[y.numpy() == c], real_feats[real_y == c]) for c in range(ds.num_classes)])
    return {"fid": float(np.mean(overall)), "fid_per_class": np.nanmean(np.array(per_class), axis=0).tolist()}


def _fid_or_nan(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(a, b) if len(a) > 1 and len(b) > 1 else math.nan


def _manifold_halves(ds: MedicalDataset, real_y: np.ndarray, cap: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (half A, half B) of the training indices, each at most ``cap``."""
    rng = np.random.default_rng([seed, 3])
    halves = []
    for c in range(ds.num_classes):
        idx = rng.permutation(np.flatnonzero(real_y == c))
        m = min(len(idx) // 2, cap)
        halves.append((idx[:m], idx[m:2 * m]))
    return halves


def _prdc_per_class(sample_feats: list[np.ndarray], real_feats: np.ndarray, halves, k: int) -> dict:
    """``sample_feats[c]`` against half A of class c's real training features."""
    scores = [prdc(torch.from_numpy(real_feats[a]), torch.from_numpy(s[:len(a)]), k)
              for s, (a, _) in zip(sample_feats, halves)]
    return {m: [s[m] for s in scores] for m in ("precision", "recall", "density", "coverage")}


def nearest_distances(x: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Pixel L2 distance from each image of ``x`` to its nearest image in ``reference``."""
    t = reference.flatten(1)
    return torch.cat([torch.cdist(x[i:i + 512].flatten(1), t).min(dim=1).values
                      for i in range(0, len(x), 512)]).numpy()


def copy_check(fakes: torch.Tensor, train: torch.Tensor, val: torch.Tensor) -> dict:
    """Nearest-training-image distances (pixel L2) of fakes against those of real validation images."""
    d_fake, d_val = nearest_distances(fakes, train), nearest_distances(val, train)
    p05, p50 = np.quantile(d_val, 0.05), np.quantile(d_val, 0.5)
    return {"nn_below_val_p05": float((d_fake < p05).mean()), "nn_below_val_median": float((d_fake < p50).mean()),
            "nn_median_fake": float(np.median(d_fake)), "nn_median_val": float(p50)}


def generator_quality(generators: list[Generator], ds: MedicalDataset, extractor: torch.nn.Module, *,
                      config: QualityConfig = QualityConfig(), with_tstr: bool = True) -> dict:
    """Every quality number for one set of (hospital) generators; reads train and val, never test."""
    k = ds.num_classes
    train_x, train_y = ds.train.tensors()
    val = ds.val.tensors()
    real_feats, real_y = _features(extractor, train_x), train_y.numpy()
    x, y = synthesize(generators, config.per_class, k, config.seed)  # balanced, pooled over hospitals
    out: dict = {"per_class_images": config.per_class}
    if with_tstr:
        out["tstr"] = tstr(x, y, val, num_classes=k, config=config)
    out |= cas(extractor, x, y)
    out |= _fid_matched(extractor, generators, ds, real_feats, real_y, config)
    halves = _manifold_halves(ds, real_y, config.max_manifold, config.seed)
    fake_feats = _features(extractor, synthesize(generators, max(len(a) for a, _ in halves), k, config.seed + 1)[0])
    per = max(len(a) for a, _ in halves)
    out |= _prdc_per_class([fake_feats[c * per:(c + 1) * per] for c in range(k)], real_feats, halves, config.k)
    out |= copy_check(x[::max(1, len(x) // 2000)], train_x, val[0])  # every class (x is class-major)
    return out


def reference_quality(ds: MedicalDataset, extractor: torch.nn.Module, *, config: QualityConfig = QualityConfig()
                      ) -> dict:
    """What real data scores on the same metrics: TSTR of the real training split, CAS of the real
    validation images, FID(val, train), and PRDC of one half of the training images against the other."""
    k = ds.num_classes
    train_x, train_y = ds.train.tensors()
    vx, vy = ds.val.tensors()
    real_feats, real_y = _features(extractor, train_x), train_y.numpy()
    val_feats = _features(extractor, vx)
    halves = _manifold_halves(ds, real_y, config.max_manifold, config.seed)
    out = {"tstr": tstr(train_x, train_y, (vx, vy), num_classes=k, config=config),
           "fid": frechet_distance(val_feats, real_feats),
           "fid_per_class": [_fid_or_nan(val_feats[vy.numpy() == c], real_feats[real_y == c]) for c in range(k)]}
    out |= cas(extractor, vx, vy)
    out |= _prdc_per_class([real_feats[b] for _, b in halves], real_feats, halves, config.k)
    out |= copy_check(vx, train_x, vx)
    out["config"] = asdict(config)
    return out
