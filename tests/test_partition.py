"""Every example once, seeded determinism, label skew that fades as alpha grows."""
from __future__ import annotations

import numpy as np
import pytest

from hfgan_core.errors import UserError
from hfgan_core.partition import class_counts, format_class_counts, partition, plot_class_counts

LABELS = np.repeat(np.arange(4), [500, 300, 150, 50])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_each_example_exactly_once_and_min_size(scheme):
    parts = partition(LABELS, 6, scheme=scheme, alpha=0.5, min_size=20, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS) and np.array_equal(np.sort(joined), np.arange(len(LABELS)))
    assert min(len(p) for p in parts) >= 20


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_seeded_determinism(scheme):
    a = partition(LABELS, 5, scheme=scheme, seed=7)
    b = partition(LABELS, 5, scheme=scheme, seed=7)
    c = partition(LABELS, 5, scheme=scheme, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _skew(parts) -> float:
    """Mean total-variation distance between client label histograms and the global one."""
    counts = class_counts(LABELS, parts, 4).astype(float)
    global_p = np.bincount(LABELS) / len(LABELS)
    return float(np.mean(0.5 * np.abs(counts / counts.sum(1, keepdims=True) - global_p).sum(1)))


def test_large_alpha_approaches_iid_label_histograms():
    skews = [np.mean([_skew(partition(LABELS, 5, alpha=a, seed=s, min_size=1)) for s in range(5)])
             for a in (0.1, 1.0, 100.0)]
    assert skews[0] > skews[1] > skews[2]
    assert skews[2] < 0.05 and skews[0] > 0.3


def test_quantity_skew_keeps_labels_iid_but_sizes_unequal():
    parts = partition(LABELS, 5, scheme="quantity", alpha=0.5, seed=0, min_size=10)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 2 * min(sizes)
    assert _skew([p for p in parts if len(p) > 100]) < 0.1


def test_impossible_requests_are_refused():
    with pytest.raises(UserError, match="clients x minimum size"):
        partition(LABELS, 50, min_size=40)
    with pytest.raises(UserError, match="unknown partition"):
        partition(LABELS, 2, scheme="bogus")
    with pytest.raises(UserError, match="alpha must be positive"):
        partition(LABELS, 2, alpha=0)


def test_table_and_plot():
    parts = partition(LABELS, 3, seed=0)
    counts = class_counts(LABELS, parts, 4)
    assert counts.sum() == len(LABELS) and counts.shape == (3, 4)
    text = format_class_counts(counts, ["a", "b", "c", "d"])
    assert text.splitlines()[0].split()[-1] == "total" and len(text.splitlines()) == 4
    import matplotlib
    matplotlib.use("Agg")
    ax = plot_class_counts(counts, ["a", "b", "c", "d"])
    assert len(ax.patches) == 12


def test_a_partition_that_keeps_failing_is_refused_not_returned_short():
    """alpha so small that nearly every draw gives one hospital everything: after its tries the
    partition says so (and how to fix it) instead of handing back an empty hospital."""
    with pytest.raises(UserError, match="raise --alpha or lower the minimum size"):
        partition(LABELS, 5, alpha=1e-4, min_size=len(LABELS) // 6, seed=0)


def test_client_fraction_outside_zero_one_is_refused():
    from hfgan_core.server import select_clients
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(UserError, match="--client-fraction must lie in"):
            select_clients(np.random.default_rng(0), 5, fraction=fraction)
