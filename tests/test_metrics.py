"""Metrics against scikit-learn, closed forms and brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from hfgan_core.metrics import (classification_metrics, crossfit_threshold_accuracy, fid, frechet_distance,
                                inception_score, mix_accuracy)


def test_classification_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    m = classification_metrics(y, p)
    assert m["accuracy"] == np.mean(p.argmax(1) == y)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    assert m["predicted_classes"] == 3
    majority = classification_metrics(np.array([0, 0, 0, 1]), np.tile([0.9, 0.1], (4, 1)))
    assert majority["accuracy"] == 0.75 and majority["balanced_accuracy"] == 0.5  # collapsed: one class only
    assert majority["predicted_classes"] == 1
    yb = rng.integers(0, 2, 100)
    pb = rng.dirichlet(np.ones(2), 100)
    assert classification_metrics(yb, pb)["auc"] == pytest.approx(roc_auc_score(yb, pb[:, 1]))


def test_mix_accuracy_is_plain_accuracy_on_a_test_set_with_that_class_mix():
    """Brute force: repeat each class's test examples until the classes follow the mix exactly."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [4, 6, 10])
    pred = np.where(rng.random(20) < 0.6, y, rng.integers(0, 3, 20))
    mix = np.array([0.5, 0.25, 0.25])  # of 120 examples: 60 / 30 / 30 -> repeat 15x, 5x, 3x
    reps = np.array([15, 5, 3])[y]
    brute = (np.repeat(pred, reps) == np.repeat(y, reps)).mean()
    assert mix_accuracy(y, pred, mix) == pytest.approx(brute)
    assert mix_accuracy(y, pred, np.bincount(y) / len(y)) == pytest.approx((pred == y).mean())


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


# ---- IS and FID through torchmetrics -------------------------------------------------------

class _Identity(torch.nn.Module):
    """A 'feature extractor' whose features and logits are its (N, d) input: FID reduces to the
    Gaussian formula and IS to the entropy terms of the given logits."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(d, d)  # the identity map, so "logits" are the input too
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(d))
            self.head.bias.zero_()

    def features(self, x):
        return x

    def forward(self, x):
        return x


def test_brute_force_auc_and_macro_f1():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 150)
    score = rng.normal(y * 0.8, 1.0)
    p = np.stack([1 - 1 / (1 + np.exp(-score)), 1 / (1 + np.exp(-score))], 1)
    pos, neg = score[y == 1], score[y == 0]
    pairs = [(a > b) + 0.5 * (a == b) for a in pos for b in neg]  # Mann-Whitney: P(score+ > score-)
    m = classification_metrics(y, p)
    assert m["auc"] == pytest.approx(np.mean(pairs))
    pred = p.argmax(1)
    f1s = []
    for c in (0, 1):
        tp = np.sum((pred == c) & (y == c))
        f1s.append(2 * tp / (np.sum(pred == c) + np.sum(y == c)))
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))


def test_fid_of_a_set_against_itself_is_zero():
    x = torch.randn(500, 6, dtype=torch.float64)
    assert fid(_Identity(6), x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_gaussians_matches_the_closed_form():
    """N(mu1, diag s1^2) vs N(mu2, diag s2^2): ||mu1 - mu2||^2 + sum (s1 - s2)^2."""
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, -0.5])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([2.0, 1.0, 0.5, 3.0])
    a = (mu1 + s1 * torch.randn(40000, 4, generator=g)).double()
    b = (mu2 + s2 * torch.randn(40000, 4, generator=g)).double()
    closed = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())  # = 3 + 6 = 9
    assert fid(_Identity(4), a, b) == pytest.approx(closed, rel=0.03)


def test_torchmetrics_fid_agrees_with_our_scipy_reference():
    rng = np.random.default_rng(5)
    a = rng.normal(0, 1, (3000, 8)) @ rng.normal(0, 1, (8, 8))
    b = rng.normal(0.3, 1.2, (3000, 8)) @ rng.normal(0, 1, (8, 8))
    ours = frechet_distance(a, b)
    assert fid(_Identity(8), torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ours, rel=1e-4)


@pytest.mark.parametrize("k", [2, 5])
def test_inception_score_of_confident_uniform_predictions_is_k(k):
    logits = 50.0 * torch.eye(k).repeat(200, 1)  # every image certain of its class, classes equally often
    mean, _ = inception_score(_Identity(k), logits, splits=1)
    assert mean == pytest.approx(k, rel=1e-4)
    collapsed, _ = inception_score(_Identity(k), 50.0 * torch.eye(k)[[0] * 400], splits=1)
    assert collapsed == pytest.approx(1.0, rel=1e-4)  # one class only: no diversity


class _FakeInception(torch.nn.Module):
    """Stands in for torchmetrics' NoTrainInceptionV3 (no weights can be downloaded here): records
    what it is given and returns simple image statistics as 'features' or 'logits'."""
    seen: list = []

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kw):
        super().__init__()
        self.kind, self.path = features_list[0], feature_extractor_weights_path

    def forward(self, x):
        _FakeInception.seen.append((x.dtype, tuple(x.shape[1:]), self.path))
        f = x.float().flatten(2).mean(-1)  # (N, 3) channel means in [0, 255]
        width = 2048 if self.kind == "2048" else 1008
        return torch.cat([f, f ** 0.5, torch.zeros(len(x), width - 6)], 1) / 50


def test_standard_fid_is_plumbing(monkeypatch, tmp_path):
    import torchmetrics.image.fid as tm_fid
    from hfgan_core import metrics
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", _FakeInception)
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"x")
    monkeypatch.setenv(metrics.INCEPTION_ENV, str(weights))
    assert metrics.inception_weights() == str(weights)
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(300, 1, 28, 28, generator=g) * 2 - 1
    out = metrics.standard_fid_is(gray, gray, str(weights))
    assert out["fid_inception"] == pytest.approx(0.0, abs=1e-3)  # a set against itself
    assert out["inception_score_inception"] >= 1.0
    assert {s for s in _FakeInception.seen} == {(torch.uint8, (3, 28, 28), str(weights))}  # RGB uint8, our path
    monkeypatch.setenv(metrics.INCEPTION_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(metrics.UserError, match="no such file"):
        metrics.inception_weights()
