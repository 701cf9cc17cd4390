"""Paired differences between two methods, with a bootstrap confidence interval.

Two methods of the benchmark are scored on the same test images with the same seeds (the same
hospitals), so their difference is paired. The bootstrap resamples both sources of variation a
reader cares about: the seeds (hospital splits and training randomness) and the test images (a
finite test set). The design is crossed, not nested: every seed is scored on the same test images,
so a replicate draws one resample of them and scores every drawn seed on it. (Drawing a fresh
resample per seed would average the test set's error over seeds as if each seed had its own test
set, and give intervals too narrow by up to √seeds in that part.)"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .metrics import classification_metrics

Metric = Callable[[np.ndarray, np.ndarray], float]  # (labels (N,), probabilities (M, N, K)) -> value


def metric(name: str) -> Metric:
    """A metric of ``classification_metrics`` over M models' probabilities (M, N, K), averaged
    over the models (the "local only" row has one model per hospital; others have one)."""
    def value(y: np.ndarray, probas: np.ndarray) -> float:
        return float(np.mean([classification_metrics(y, p)[name] for p in probas]))
    return value


def paired_delta(y: np.ndarray, a: list[np.ndarray], b: list[np.ndarray], *, score: Metric,
                 n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean over seeds of score(a) - score(b), and its bootstrap interval.

    ``a[s]`` and ``b[s]`` are the two methods' test probabilities (M, N, K) for seed s, both on the
    test labels ``y`` (N,). Each replicate draws seeds with replacement and one resample of the test
    images, shared by both methods and by every drawn seed."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same seeds for both methods (got {len(a)} and {len(b)})")
    rng = np.random.default_rng(seed)
    n, s = len(y), len(a)
    observed = float(np.mean([score(y, pa) - score(y, pb) for pa, pb in zip(a, b)]))
    reps = np.empty(n_boot)
    for i in range(n_boot):
        seeds, idx = rng.integers(s, size=s), rng.integers(n, size=n)
        reps[i] = np.mean([score(y[idx], a[k][:, idx]) - score(y[idx], b[k][:, idx]) for k in seeds])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return {"delta": observed, "low": float(low), "high": float(high), "confidence": confidence,
            "seeds": s, "replicates": n_boot}
