"""Metrics against scikit-learn, closed forms and brute force."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from hfgan_core.metrics import classification_metrics, crossfit_threshold_accuracy, frechet_distance


def test_classification_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    m = classification_metrics(y, p)
    assert m["accuracy"] == np.mean(p.argmax(1) == y)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    yb = rng.integers(0, 2, 100)
    pb = rng.dirichlet(np.ones(2), 100)
    assert classification_metrics(yb, pb)["auc"] == pytest.approx(roc_auc_score(yb, pb[:, 1]))


def test_frechet_distance_closed_form_and_self():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    b = rng.normal(2, 3, (4000, 3))
    # N(0, I) vs N(2, 9I): ||mu||^2 + tr(I + 9I - 2*3I) = 3*4 + 3*4 = 24
    assert frechet_distance(a, b) == pytest.approx(24, rel=0.05)


def test_crossfit_threshold_accuracy():
    y = np.array([0] * 50 + [1] * 150)
    perfect = y + np.random.default_rng(0).normal(0, 0.01, 200) + 5.0  # separable, shifted far from 0.5
    assert crossfit_threshold_accuracy(y, perfect) == 1.0
    noise = np.random.default_rng(1).normal(0, 1, 200)
    acc = crossfit_threshold_accuracy(y, noise)
    assert acc <= 0.8  # useless scores do not beat the majority rate (0.75) by much

    def brute(seed):  # an independent re-implementation of the same protocol
        rng = np.random.default_rng(seed)
        fold = np.empty(200, int)
        for c in (0, 1):
            idx = rng.permutation(np.flatnonzero(y == c))
            fold[idx] = np.arange(len(idx)) % 2
        right = 0
        grid = np.linspace(noise.min() - 1, noise.max() + 1, 4001)
        for f in (0, 1):
            accs = [((noise[fold != f] > t) == y[fold != f]).mean() for t in grid]
            right += ((noise[fold == f] > grid[int(np.argmax(accs))]) == y[fold == f]).sum()
        return right / 200
    assert acc == pytest.approx(brute(0), abs=0.03)
