"""Class-conditional DCGAN generator and a projection discriminator.

The discriminator is trained with per-example clipping, so it has no layer that
mixes examples of a batch (no BatchNorm) and no in-place activation (the clipping
engine reads each layer's output gradient). The generator never sees real data
and keeps BatchNorm.

Sizes: any ``S = b * 2**k`` with ``b`` in {4, 7} (28 and 64 px are the ones we use).
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import UserError


def _layout(size: int) -> tuple[int, int]:
    """(base, upsamplings) with base * 2**upsamplings == size."""
    for base in (7, 4):
        k, s = 0, size
        while s > base and s % 2 == 0:
            s //= 2
            k += 1
        if s == base and k >= 1:
            return base, k
    raise UserError(f"image size {size} px is not supported; the models take 28, 32, 56, 64 or 128 px")


class Generator(nn.Module):
    """G(z, y): noise plus a learned class embedding -> image in [-1, 1]."""

    def __init__(self, *, num_classes: int, channels: int, image_size: int, nz: int = 64, ngf: int = 32,
                 upsample: str = "deconv") -> None:
        super().__init__()
        if upsample not in ("deconv", "nearest"):
            raise UserError(f"unknown generator upsampling '{upsample}'; choose deconv or nearest")
        base, ups = _layout(image_size)
        self.nz, self.num_classes = nz, num_classes
        width = ngf * 2 ** (ups - 1)
        self.embed = nn.Embedding(num_classes, nz)
        self.project = nn.Sequential(  # (B, 2nz) -> (B, width, base, base)
            nn.Linear(2 * nz, width * base * base, bias=False),
            nn.Unflatten(1, (width, base, base)),
            nn.BatchNorm2d(width), nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for i in range(ups):  # each block doubles H and W and halves the channels; the last one outputs C
            last = i == ups - 1
            c_out = channels if last else width // 2
            if upsample == "deconv":
                layers.append(nn.ConvTranspose2d(width, c_out, 4, 2, 1, bias=last))
            else:  # nearest-neighbour upsampling + 3x3 conv: no checkerboard artefacts (Odena et al. 2016)
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, c_out, 3, 1, 1, bias=last)]
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(c_out), nn.ReLU()]
            width = c_out
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(y)], dim=1)  # (B, 2nz)
        return self.upsample(self.project(h))

    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """n images and their labels; labels uniform over classes unless given."""
        device = self.embed.weight.device
        if y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=device)
        z = torch.randn(n, self.nz, generator=generator, device=device)
        return self(z, y), y


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018): D(x, y) = w·phi(x) + b + e_y·phi(x).

    Returns logits of shape (B,), one per example, so per-example losses need no squeeze.
    With ``aux_classifier`` it also has an AC-GAN head (Odena et al. 2017) that predicts
    the class from phi(x): a direct label signal for D and, through D, for the generators.
    """

    def __init__(self, *, num_classes: int, channels: int, image_size: int, ndf: int = 32,
                 aux_classifier: bool = False) -> None:
        super().__init__()
        _layout(image_size)
        layers: list[nn.Module] = []
        width, size, c_in = ndf, image_size, channels
        while size > 4:  # stride-2 convs: 28 -> 14 -> 7 -> 3, 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(c_in, width, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in, size = width, size // 2
            width = min(2 * width, 4 * ndf)
        self.features = nn.Sequential(*layers)  # (B, C, S, S) -> (B, F, s, s)
        self.feature_dim = c_in
        self.linear = nn.Linear(c_in, 1)
        self.embed = nn.Embedding(num_classes, c_in)
        self.aux = nn.Linear(c_in, num_classes) if aux_classifier else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x, y)[0]

    def forward_with_aux(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Real/fake logits (B,) and, with the AC-GAN head, class logits (B, K)."""
        h = self.features(x).sum(dim=(2, 3))  # (B, F): global sum pooling
        logits = self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)  # (B,)
        return logits, (self.aux(h) if self.aux is not None else None)


def build_models(*, num_classes: int, channels: int, image_size: int, nz: int = 64, ngf: int = 32,
                 ndf: int = 32, aux_classifier: bool = False, upsample: str = "deconv"
                 ) -> tuple[Generator, Discriminator]:
    return (Generator(num_classes=num_classes, channels=channels, image_size=image_size, nz=nz, ngf=ngf,
                      upsample=upsample),
            Discriminator(num_classes=num_classes, channels=channels, image_size=image_size, ndf=ndf,
                          aux_classifier=aux_classifier))
