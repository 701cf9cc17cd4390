"""The paired bootstrap against closed forms: a normal-approximation interval for one seed, zero
width for identical methods, and the seed-level spread when test images do not vary."""
from __future__ import annotations

import numpy as np
import pytest

from hfgan_core.stats import metric, paired_delta


def accuracy(y, probas):
    return float(np.mean(probas.argmax(-1) == y))


def one_hot(pred, k=2):
    return np.eye(k)[pred][None]  # (1 model, N, K)


def test_one_seed_matches_the_normal_approximation_of_paired_differences():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    right_a, right_b = rng.random(n) < 0.85, rng.random(n) < 0.78
    a, b = one_hot(np.where(right_a, y, 1 - y)), one_hot(np.where(right_b, y, 1 - y))
    got = paired_delta(y, [a], [b], score=accuracy, n_boot=4000, seed=1)
    d = right_a.astype(float) - right_b.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(n)
    assert got["delta"] == pytest.approx(d.mean())
    assert got["low"] == pytest.approx(d.mean() - half, abs=0.006)
    assert got["high"] == pytest.approx(d.mean() + half, abs=0.006)


def test_identical_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 100)
    p = [rng.dirichlet(np.ones(3), 100)[None] for _ in range(3)]
    got = paired_delta(y, p, p, score=metric("macro_f1"), n_boot=50)
    assert got["delta"] == got["low"] == got["high"] == 0.0


def test_seed_resampling_spans_the_seed_level_spread():
    """Every test image answered the same way within a seed, so only the seeds vary: the interval
    is the bootstrap of the seed means, which for 5 seeds of +-0.1 lies within [-0.1, 0.1]."""
    y = np.zeros(50, dtype=int)
    base = one_hot(np.zeros(50, dtype=int))
    shifted = []
    for k, frac in enumerate([0.9, 0.7, 0.9, 0.7, 0.8]):
        pred = np.zeros(50, dtype=int)
        pred[: round((1 - frac) * 50)] = 1
        shifted.append(one_hot(pred))
    got = paired_delta(y, [base] * 5, shifted, score=accuracy, n_boot=2000)
    assert got["delta"] == pytest.approx(1 - 0.8)
    assert 0.1 <= got["low"] < 0.2 < got["high"] <= 0.3
    with pytest.raises(ValueError, match="same seeds"):
        paired_delta(y, [base], [base, base], score=accuracy)
