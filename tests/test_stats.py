"""The paired bootstrap against closed forms: a normal-approximation interval for one seed (and for
identical seeds, since all seeds share one test set), zero width for identical methods, and the
exact bootstrap over seeds when test images do not vary."""
from __future__ import annotations

import itertools

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


def test_identical_seeds_keep_the_one_test_set_interval():
    """Every seed is scored on the same test images. When the seeds agree exactly, the only variation
    is the test set's, and more seeds of it must not narrow the interval: it stays the one-seed
    normal approximation. (A fresh image resample per seed would shrink it by about √5.)"""
    rng = np.random.default_rng(4)
    n = 600
    y = rng.integers(0, 2, n)
    right_a, right_b = rng.random(n) < 0.85, rng.random(n) < 0.78
    a, b = one_hot(np.where(right_a, y, 1 - y)), one_hot(np.where(right_b, y, 1 - y))
    got = paired_delta(y, [a] * 5, [b] * 5, score=accuracy, n_boot=4000, seed=1)
    d = right_a.astype(float) - right_b.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(n)
    assert got["high"] - got["low"] == pytest.approx(2 * half, rel=0.08)


def test_identical_methods_differ_by_exactly_zero():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 100)
    p = [rng.dirichlet(np.ones(3), 100)[None] for _ in range(3)]
    got = paired_delta(y, p, p, score=metric("macro_f1"), n_boot=50)
    assert got["delta"] == got["low"] == got["high"] == 0.0


def test_seed_resampling_matches_the_exact_bootstrap_over_seeds():
    """Within a seed every test image gives the same difference (method A right on all of them and
    B wrong, or both right), so resampling images changes nothing and the interval is the
    bootstrap of the seed differences alone. Its distribution is enumerated exactly over all 5^5
    draws of seeds: an interval that forgot to resample seeds would have zero width."""
    y = np.zeros(50, dtype=int)
    right, wrong = one_hot(np.zeros(50, dtype=int)), one_hot(np.ones(50, dtype=int))
    per_seed = [1, 0, 1, 0, 0]  # A's accuracy minus B's in each seed
    a = [right] * 5
    b = [wrong if d else right for d in per_seed]
    got = paired_delta(y, a, b, score=accuracy, n_boot=2000, seed=3)
    draws = np.array(list(itertools.product(per_seed, repeat=5))).mean(axis=1)  # every bootstrap draw once
    low, high = np.quantile(draws, [0.025, 0.975])
    assert got["delta"] == pytest.approx(0.4)
    assert (got["low"], got["high"]) == pytest.approx((low, high)) == (0.0, 0.8)
    with pytest.raises(ValueError, match="same seeds"):
        paired_delta(y, [right], [right, right], score=accuracy)
