"""Exploration (session 24): a discriminator whose first stage is a fixed wavelet filter bank.

Under DP every trainable weight of D gets noise, and at epsilon 10 with about 1,000 records a
hospital D's first convolutions are learnt mostly from noise. Tramer & Boneh (ICLR 2021) found that
DP-SGD learns far better on fixed, data-independent ScatterNet features than end to end. Here D's
first stage is fixed (no parameters, no data): the modulus of the image convolved with complex
Morlet wavelets at 2 scales and 8 orientations (first-order scattering: |x * psi_{j,theta}|), with
the image itself, averaged over 4 x 4 blocks -> (B, 17 C, 7, 7). A fine-scale wavelet sees
high-frequency static directly, which today's fakes at epsilon 10 are full of. Then a trainable
head: conv 3x3 (17C -> 2 ndf), conv 3x3 stride 2 (-> 4 ndf), global sum, the same real/fake,
projection and AC-GAN heads. About half of today's D weights. Each example is transformed alone,
so per-example clipping and the accountant are unchanged.

The recipe is otherwise d5-ms-m9 (or d5-ms-m9-ngf64 with ``ngf64``); scored on validation by
recipe_search.run_recipe. Record: scratch_scatter_d.jsonl.

Usage (from the repository root): python results/recipe_search/scratch_scatter_d.py DATASET SEED [ngf64]
"""
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, "benchmarks")
import recipe_search as rs  # noqa: E402
from hfgan_core import models  # noqa: E402

dataset, seed = sys.argv[1], int(sys.argv[2])
base = "d5-ms-m9-ngf64" if "ngf64" in sys.argv[3:] else "d5-ms-m9"


def morlet(size: int, sigma: float, theta: float, xi: float, slant: float = 0.5) -> torch.Tensor:
    """A complex Morlet wavelet (zero mean, L1 norm 1) on a size x size grid, centred."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    env = torch.exp(-(u ** 2 + (slant * v) ** 2) / (2 * sigma ** 2))
    wave = env * torch.exp(1j * xi * u)
    wave = wave - env * (wave.sum() / env.sum())  # zero mean: a flat region gives 0
    return (wave / wave.abs().sum()).to(torch.complex64)


class ScatterFront(nn.Module):
    """x (B, C, S, S) -> (B, C (1 + J L), S/4, S/4): [x, |x * psi_{j,theta}|] averaged over 4 x 4.
    Scale j's wavelets on a (4 * 2**j + 3)-pixel grid (7 and 11 px): about 3 sigma each side."""

    def __init__(self, channels: int, J: int = 2, L: int = 8) -> None:
        super().__init__()
        for j in range(J):
            size = 4 * 2 ** j + 3
            psi = [morlet(size, 0.8 * 2 ** j, (L // 2 - 1 - t) * math.pi / L, 3 / 4 * math.pi / 2 ** j) for t in range(L)]
            w = torch.stack([p.real for p in psi] + [p.imag for p in psi])[:, None]  # (2 L, 1, k, k)
            self.register_buffer(f"w{j}", w.repeat(channels, 1, 1, 1))  # depthwise: each channel alone
        self.J, self.L = J, L
        self.jl = J * L

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, s, _ = x.shape
        mods = []
        for j in range(self.J):
            w = getattr(self, f"w{j}")
            out = F.conv2d(x, w, padding=w.shape[-1] // 2, groups=c).view(b, c, 2, self.L, s, s)
            mods.append(torch.sqrt(out[:, :, 0] ** 2 + out[:, :, 1] ** 2 + 1e-8))  # (B, C, L, S, S)
        feats = torch.cat([x[:, :, None]] + mods, 2).flatten(1, 2)  # (B, C (1 + J L), S, S)
        return F.avg_pool2d(feats, 4, 4, ceil_mode=True)  # 28 -> 7


def init(self, *, num_classes, channels, image_size, ndf=32, aux_classifier=False):
    nn.Module.__init__(self)
    front = ScatterFront(channels)
    c0 = channels * (1 + front.jl)
    self.features = nn.Sequential(front, nn.Conv2d(c0, 2 * ndf, 3, 1, 1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(2 * ndf, 4 * ndf, 3, 2, 1), nn.LeakyReLU(0.2))
    self.feature_dim = 4 * ndf
    self.linear = nn.Linear(4 * ndf, 1)
    self.embed = nn.Embedding(num_classes, 4 * ndf)
    self.aux = nn.Linear(4 * ndf, num_classes) if aux_classifier else None


models.Discriminator.__init__ = init
torch.set_num_threads(1)
rs.RECIPES["x"] = rs.RECIPES[base]
line = rs.run_recipe("x", dataset, 10.0, seed, Path(f"results/runs/scratch-scatter-{base}-{dataset}-seed{seed}"))
line["recipe"] = f"{base} + scatter D (scratch)"
v = line["val"]
print(f"scatter {base} {dataset} seed {seed}: TSTR AUC {v['tstr']['auc']:.3f} macro-F1 {v['tstr']['macro_f1']:.3f} "
      f"CAS {v['cas']:.3f} coverage {[round(c, 2) for c in v['coverage']]} {line['train_s']:.0f} s", flush=True)
with open("results/recipe_search/scratch_scatter_d.jsonl", "a") as f:
    f.write(json.dumps(rs.jsonable(line)) + "\n")
