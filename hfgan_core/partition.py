"""Split one training set into non-IID hospitals.

Three schemes, all seeded, all assigning every training example to exactly one
client, all honouring a minimum client size:

* ``iid``        -- a random equal split;
* ``dirichlet``  -- label skew: for each class, client shares ~ Dir(alpha) (small alpha = strong skew);
* ``quantity``   -- size skew: client shares ~ Dir(alpha), labels stay IID within a client.

flwr-datasets has similar partitioners but needs a Hugging Face ``datasets`` table
(and pyarrow) around our arrays; these ~80 lines keep the core dependency-light.
"""
from __future__ import annotations

import numpy as np

from .errors import UserError

SCHEMES = ("iid", "dirichlet", "quantity")
_MAX_TRIES = 1000


def partition(labels: np.ndarray, num_clients: int, *, scheme: str = "dirichlet", alpha: float = 0.5,
              min_size: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Return one sorted index array per client; together they cover ``range(len(labels))`` once."""
    labels = np.asarray(labels)
    n = len(labels)
    if scheme not in SCHEMES:
        raise UserError(f"unknown partition '{scheme}'; choose one of {', '.join(SCHEMES)}")
    if num_clients < 1:
        raise UserError(f"--clients must be at least 1 (got {num_clients})")
    if num_clients * min_size > n:
        raise UserError(f"{num_clients} clients x minimum size {min_size} > {n} training examples; "
                        "use fewer clients or a smaller minimum size")
    if scheme != "iid" and not alpha > 0:
        raise UserError(f"--alpha must be positive for the {scheme} partition (got {alpha})")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]
    for _ in range(_MAX_TRIES):  # redraw until every client reaches min_size, as is usual for Dirichlet splits
        parts = _dirichlet_label(labels, num_clients, alpha, rng) if scheme == "dirichlet" \
            else _dirichlet_quantity(n, num_clients, alpha, rng)
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(p) for p in parts]
    raise UserError(f"no {scheme} partition with alpha={alpha} gave every one of {num_clients} clients "
                    f"{min_size} examples in {_MAX_TRIES} draws; raise --alpha or lower the minimum size")


def _split_by_shares(indices: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
    return np.split(indices, cuts)


def _dirichlet_label(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for client, chunk in enumerate(_split_by_shares(idx, rng.dirichlet(np.full(k, alpha)))):
            parts[client].append(chunk)
    return [np.concatenate(p) for p in parts]


def _dirichlet_quantity(n: int, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    return _split_by_shares(rng.permutation(n), rng.dirichlet(np.full(k, alpha)))


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(clients, classes) table of example counts."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def format_class_counts(counts: np.ndarray, class_names: tuple[str, ...] | list[str]) -> str:
    width = max(8, *(len(c) for c in class_names))
    head = "client " + " ".join(f"{c:>{width}}" for c in class_names) + f" {'total':>{width}}"
    rows = [f"{i:6d} " + " ".join(f"{v:>{width}d}" for v in row) + f" {row.sum():>{width}d}"
            for i, row in enumerate(counts)]
    return "\n".join([head, *rows])


def plot_class_counts(counts: np.ndarray, class_names: tuple[str, ...] | list[str], ax=None):
    """Stacked bar chart, one bar per client: the picture of label and quantity skew."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * len(counts) + 2, 3))
    bottom = np.zeros(len(counts))
    for c, name in enumerate(class_names):
        ax.bar(np.arange(len(counts)), counts[:, c], bottom=bottom, label=name)
        bottom += counts[:, c]
    ax.set_xlabel("client (hospital)")
    ax.set_ylabel("training images")
    ax.set_xticks(np.arange(len(counts)))
    ax.legend(fontsize="small")
    return ax
