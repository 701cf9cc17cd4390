"""DiffAugment (Zhao et al., NeurIPS 2020): D sees every image, real or fake, randomly shifted and
with a square cut out, and G's gradient flows back through the same augmentation.

Why: a hospital holds about 1,000 records, and under DP each of D's steps is mostly noise; a GAN
with little data lets D learn its few real images by heart, and G then collapses onto what fools
that D. Augmenting D's inputs, real and fake alike (augmenting only the reals would teach G to
draw shifted, cut-out images), gives D a harder, smoother task. Measured on brain MRI at ε = 10
(README, "Choosing the recipe").

Privacy: the augmentation transforms each example alone, with randomness from the hospital's own
rng and nothing from any other record, so each example's loss is still a function of that one
example: per-example clipping bounds its gradient exactly as before, and the accountant's view
(one record moves one clipped term) is unchanged.
"""
from __future__ import annotations

import torch

SHIFT = 1 / 8  # translation by up to this fraction of the image side, in x and in y (zero fill)
CUTOUT = 1 / 4  # side of the square set to zero (mid-grey in [-1, 1]), as a fraction of the side


def diff_augment(x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, S, S) -> each image shifted by (dy, dx) in [-s, s] pixels, s = round(S / 8), the
    uncovered border zero, then one (S/4 x S/4) square at a random place set to zero. Differentiable
    in x; draws dx, dy, the square's row and its column from ``rng``, in that order."""
    b, _, h, w = x.shape
    s = max(1, round(h * SHIFT))
    dx = torch.randint(-s, s + 1, (b,), generator=rng, device=x.device)
    dy = torch.randint(-s, s + 1, (b,), generator=rng, device=x.device)
    k = max(1, round(h * CUTOUT))
    top = torch.randint(0, h - k + 1, (b,), generator=rng, device=x.device)
    left = torch.randint(0, w - k + 1, (b,), generator=rng, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (B, S): output row r reads input r - dy
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, S, S)
    src = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (B, S, S) flat index
    shifted = x.flatten(2).gather(2, src.flatten(1)[:, None, :].expand(-1, x.shape[1], -1)).view_as(x)
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    cut = (((r[None, :] >= top[:, None]) & (r[None, :] < (top + k)[:, None]))[:, :, None]
           & ((c[None, :] >= left[:, None]) & (c[None, :] < (left + k)[:, None]))[:, None, :])  # (B, S, S)
    return shifted * (inside & ~cut)[:, None].to(x.dtype)
