"""DiffAugment against a brute-force pixel loop, and the property per-example clipping relies on:
each augmented example depends on that example alone."""
from __future__ import annotations

import torch

from hfgan_core.diffaugment import diff_augment


def brute_force(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Output pixel (r, c) of image i is input pixel (r - dy_i, c - dx_i), zero outside the image
    and inside image i's cut-out square; the draws as documented (dx, dy, top, left)."""
    b, _, h, w = x.shape
    g = torch.Generator().manual_seed(seed)
    s, k = round(h / 8), round(h / 4)
    dx, dy = torch.randint(-s, s + 1, (b,), generator=g), torch.randint(-s, s + 1, (b,), generator=g)
    top, left = torch.randint(0, h - k + 1, (b,), generator=g), torch.randint(0, w - k + 1, (b,), generator=g)
    out = torch.zeros_like(x)
    for i in range(b):
        for r in range(h):
            for c in range(w):
                rr, cc = r - int(dy[i]), c - int(dx[i])
                cut = top[i] <= r < top[i] + k and left[i] <= c < left[i] + k
                if 0 <= rr < h and 0 <= cc < w and not cut:
                    out[i, :, r, c] = x[i, :, rr, cc]
    return out


def test_shift_and_cutout_equal_a_pixel_loop():
    x = torch.randn(5, 3, 28, 28)
    got = diff_augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(got, brute_force(x, 7))
    assert not torch.equal(got, x)  # something moved


def test_each_example_depends_on_itself_alone_and_gradients_flow():
    x = torch.randn(6, 1, 28, 28, requires_grad=True)
    y = diff_augment(x, torch.Generator().manual_seed(1))
    other = x.detach().clone()
    other[3] += 100.0  # change one example only
    y2 = diff_augment(other, torch.Generator().manual_seed(1))
    changed = (y2 - y.detach()).flatten(1).abs().sum(1) > 0
    assert changed.tolist() == [False, False, False, True, False, False]
    grad, = torch.autograd.grad(y[2].sum(), x)  # G learns through the augmentation
    assert grad[2].abs().sum() > 0 and grad[[0, 1, 3, 4, 5]].abs().sum() == 0
