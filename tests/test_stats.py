"""The paired interval against closed forms and a second library: a normal-approximation interval
for one seed (and for identical seeds, since all seeds share one test set), zero width for identical
methods, and Student's t over the seed differences (scipy's one-sample t interval) when test images
do not vary."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

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


def test_few_seeds_get_students_t_interval_of_the_seed_differences():
    """Within a seed every test image gives the same difference (method A right on all of them and
    B wrong, or both right), so resampling images changes nothing and the interval is the one-sample
    t interval of the 5 seed differences (4 degrees of freedom), computed here by scipy. A
    percentile bootstrap over 5 seeds would give [0.0, 0.8], too narrow."""
    y = np.zeros(50, dtype=int)
    right, wrong = one_hot(np.zeros(50, dtype=int)), one_hot(np.ones(50, dtype=int))
    per_seed = [1, 0, 1, 0, 0]  # A's accuracy minus B's in each seed
    a = [right] * 5
    b = [wrong if d else right for d in per_seed]
    got = paired_delta(y, a, b, score=accuracy, n_boot=200, seed=3)
    want = st.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert got["delta"] == pytest.approx(0.4) and got["df"] == pytest.approx(4)
    assert (got["low"], got["high"]) == pytest.approx((want.low, want.high))
    assert got["low"] < 0.0 and got["high"] > 1.0
    with pytest.raises(ValueError, match="same seeds"):
        paired_delta(y, [right], [right, right], score=accuracy)


def test_seed_and_test_parts_add_in_variance():
    """Both parts present: the half-width is t × sqrt(seed variance + test variance), its quantile
    between the normal one and Student's with s - 1 = 4 degrees of freedom."""
    rng = np.random.default_rng(7)
    n = 400
    y = rng.integers(0, 2, n)
    a, b = [], []
    for p_a in (0.80, 0.86, 0.83, 0.90, 0.78):  # A's accuracy moves with the seed; B's stays
        a.append(one_hot(np.where(rng.random(n) < p_a, y, 1 - y)))
        b.append(one_hot(np.where(rng.random(n) < 0.80, y, 1 - y)))
    got = paired_delta(y, a, b, score=accuracy, n_boot=2000, seed=1)
    half = (got["high"] - got["low"]) / 2
    sd = math.hypot(got["sd_seeds"], got["sd_test"])
    assert got["sd_seeds"] > 0 and got["sd_test"] > 0
    assert 1.96 * sd < half < st.t.ppf(0.975, 4) * sd and 4 < got["df"] < math.inf
    per_seed = [accuracy(y, pa) - accuracy(y, pb) for pa, pb in zip(a, b)]
    assert got["sd_seeds"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(5))
    # the test part in closed form: the variance of a mean over images of each image's seed-averaged difference
    per_image = np.mean([(pa.argmax(-1) == y).mean(0) - (pb.argmax(-1) == y).mean(0) for pa, pb in zip(a, b)], axis=0)
    assert got["sd_test"] == pytest.approx(np.std(per_image, ddof=1) / math.sqrt(n), rel=0.1)
    # Welch-Satterthwaite by hand: only the seed part has finite (s - 1 = 4) degrees of freedom
    v_s, v_t = np.var(per_seed, ddof=1) / 5, got["sd_test"] ** 2
    df = 4 * (v_s + v_t) ** 2 / v_s ** 2
    assert got["df"] == pytest.approx(df) and half == pytest.approx(st.t.ppf(0.975, df) * math.sqrt(v_s + v_t))


def test_balanced_accuracy_score_is_sklearns_mean_over_models():
    """The Δ columns' balanced accuracy: scikit-learn's per model, averaged over the row's models,
    also on a bootstrap resample that lost a class (recall over the classes present)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from hfgan_core.benchmark.tables import balanced_accuracy
    rng = np.random.default_rng(4)
    y = rng.integers(3, size=200)
    p = rng.dirichlet(np.ones(3), size=(5, 200))  # 5 models (the "local only" row), (M, N, K)
    for labels, probas in ((y, p), (y[y != 2], p[:, y != 2])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns when a predicted class is absent from labels
            expected = np.mean([balanced_accuracy_score(labels, q.argmax(-1)) for q in probas])
        assert balanced_accuracy(labels, probas) == pytest.approx(expected)
    majority = np.zeros((1, 200, 3))
    majority[..., 0] = 1.0  # one class for everything: balanced accuracy 1 / classes, whatever the prior
    assert balanced_accuracy(y, majority) == pytest.approx(1 / 3)
