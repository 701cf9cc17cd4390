"""The server: picks clients, averages their noisy D gradients by dataset size, steps D.

Why size weighting keeps the guarantee: each upload is already a DP release of its
hospital's records (noise added on the client), and the weights N_i / sum_j N_j use
only dataset sizes, which we treat as public. A weighted sum of DP releases is
post-processing, so every hospital keeps exactly the epsilon of its own uploads. The
server never holds a raw image, label or un-noised gradient.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import UserError


def select_clients(rng: np.random.Generator, num_clients: int, *, fraction: float = 1.0) -> list[int]:
    """A seeded uniform draw of max(1, round(fraction * K)) distinct clients, sorted."""
    if not 0 < fraction <= 1:
        raise UserError(f"--client-fraction must lie in (0, 1] (got {fraction})")
    k = max(1, round(fraction * num_clients))
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def selection_schedule(seed: int, num_clients: int, rounds: int, *, fraction: float = 1.0) -> list[list[int]]:
    """Every round's selection, drawn up front from its own stream.

    The draw uses no data, so knowing it in advance lets us calibrate each client's noise
    for exactly the steps it will take, and a resumed run selects the same clients.
    """
    rng = np.random.default_rng([seed, 1])
    return [select_clients(rng, num_clients, fraction=fraction) for _ in range(rounds)]


def times_selected(schedule: list[list[int]], num_clients: int) -> np.ndarray:
    """How many rounds of the schedule select each client: what its privacy budget is planned for."""
    counts = np.zeros(num_clients, dtype=int)
    for chosen in schedule:
        counts[chosen] += 1
    return counts


def aggregation_weights(sizes: list[int]) -> list[float]:
    total = float(sum(sizes))
    return [n / total for n in sizes]


def aggregate(uploads: list[list[torch.Tensor]], sizes: list[int]) -> list[torch.Tensor]:
    """sum_i (N_i / sum_j N_j) * upload_i, parameter by parameter."""
    first = uploads[0][0]
    weights = torch.tensor(aggregation_weights(sizes), dtype=first.dtype, device=first.device)
    return [torch.tensordot(weights, torch.stack([u[p] for u in uploads]), dims=1) for p in range(len(uploads[0]))]


def apply_gradient(model: nn.Module, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    optimizer.step()
