"""Paired differences between two methods, with a confidence interval.

Two methods of the benchmark are scored on the same test images with the same seeds (the same
hospitals), so their difference is paired. The interval covers both sources of variation a
reader cares about: the seeds (hospital splits and training randomness) and the test images (a
finite test set). The design is crossed, not nested: every seed is scored on the same test images,
so the test set's error is shared by all seeds and does not average out over them. Its part of the
variance comes from a bootstrap of the test images, one resample shared by every seed (a fresh
resample per seed would shrink it by up to √seeds). The seeds' part is the sample variance of the
per-seed differences: with 5 seeds a bootstrap over seeds would underestimate it by 4/5 and use
normal quantiles where Student's t with 4 degrees of freedom belongs, an interval about 0.6× as wide
as it should be in that part."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats as st

from .metrics import classification_metrics

Metric = Callable[[np.ndarray, np.ndarray], float]  # (labels (N,), probabilities (M, N, K)) -> value


def metric(name: str) -> Metric:
    """A metric of ``classification_metrics`` over M models' probabilities (M, N, K), averaged
    over the models (the "local only" row has one model per hospital; others have one)."""
    def value(y: np.ndarray, probas: np.ndarray) -> float:
        return float(np.mean([classification_metrics(y, p)[name] for p in probas]))
    return value


def few_seeds_note(seeds: int) -> str:
    """A footnote's caveat for 2-4 seeds: the degrees of freedom then rest on a seed variance with
    seeds - 1 degrees of freedom, and the interval runs narrow (benchmarks/delta_coverage.py)."""
    return (f" With {seeds} seeds this interval runs narrow: in a simulation of this design a nominal 95 % interval "
            "covers less often (`benchmarks/delta_coverage.py`); read it as indicative."
            if 1 < seeds < 5 else "")


def paired_delta(y: np.ndarray, a: list[np.ndarray], b: list[np.ndarray], *, score: Metric,
                 n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean over seeds of score(a) - score(b), and its confidence interval.

    ``a[s]`` and ``b[s]`` are the two methods' test probabilities (M, N, K) for seed s, both on the
    test labels ``y`` (N,). Variance of the mean = the seeds' part (sample variance of the per-seed
    differences / s) + the test set's part (variance of the mean difference over ``n_boot``
    resamples of the test images, each shared by every seed). Interval: mean ± t × its square root,
    with Welch–Satterthwaite degrees of freedom (s − 1 when the seeds dominate, normal quantiles
    when the test set does). Conservative: the seed-by-image interaction sits in both parts."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same seeds for both methods (got {len(a)} and {len(b)})")
    rng = np.random.default_rng(seed)
    n, s = len(y), len(a)
    per_seed = np.array([score(y, pa) - score(y, pb) for pa, pb in zip(a, b)])
    reps = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(n, size=n)
        reps[i] = np.mean([score(y[idx], pa[:, idx]) - score(y[idx], pb[:, idx]) for pa, pb in zip(a, b)])
    v_test = float(reps.var(ddof=1))
    v_seed = float(per_seed.var(ddof=1)) / s if s > 1 else 0.0
    total = v_seed + v_test
    df = (s - 1) * total ** 2 / v_seed ** 2 if v_seed > 0 else math.inf
    half = float(st.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(total) if total > 0 else 0.0
    observed = float(per_seed.mean())
    return {"delta": observed, "low": observed - half, "high": observed + half, "confidence": confidence,
            "seeds": s, "replicates": n_boot, "df": df, "sd_seeds": math.sqrt(v_seed), "sd_test": math.sqrt(v_test)}
