"""Drawing images from trained generators, and the synthetic dataset a user takes away.

Everything here reads only the generators (post-processing of the DP training), never a
hospital's images. ``save_synthetic`` writes a MedMNIST-format ``.npz`` (``train_images`` /
``train_labels`` = synthetic, uint8, the real data's shapes) with a sidecar ``.json`` that says
what privacy the images carry, so anyone can train on it with our loader or plain numpy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .models import Generator


def _device(g: torch.nn.Module) -> torch.device:
    return next(g.parameters()).device


@torch.no_grad()
def images_for_labels(generators: list[Generator], labels: torch.Tensor, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic image per label (N, C, H, W), on the CPU, in [-1, 1]. Within each class the
    generators take turns, so every generator contributes to every class."""
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    owner = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        owner[idx] = torch.arange(len(idx)) % len(generators)
    x = None
    for i, g in enumerate(generators):
        was_training = g.training
        g.eval()
        idx = torch.nonzero(owner == i).flatten()
        z = torch.randn(len(idx), g.nz, generator=gen)  # drawn on the CPU: the same images on any device
        images = torch.cat([g(z[j:j + 1024].to(_device(g)), labels[idx][j:j + 1024].to(_device(g))).cpu()
                            for j in range(0, len(idx), 1024)]) if len(idx) else None
        g.train(was_training)
        if images is not None:
            if x is None:
                x = torch.empty(len(labels), *images.shape[1:])
            x[idx] = images
    return x, labels


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """n labels cycling through the classes: as close to uniform as n allows."""
    return torch.arange(n) % num_classes


def synthesize(generators: list[Generator], per_class: int, num_classes: int, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class, pooled over the generators (which take turns)."""
    return images_for_labels(generators, torch.arange(num_classes).repeat_interleave(per_class), seed)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> MedMNIST layout: (N, H, W) for grey, (N, H, W, 3) for RGB, uint8."""
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return u8[..., 0] if u8.shape[-1] == 1 else u8


def save_synthetic(path: str | Path, generators: list[Generator], *, per_class: int, num_classes: int,
                   seed: int, meta: dict) -> Path:
    """Write ``path`` (.npz: train_images, train_labels) and ``path`` with .json (``meta`` + counts).

    ``meta`` should carry what the images' privacy is (epsilon, delta, unit, accountant), the
    recipe and the seed: the images are as private as the generators, no more.
    """
    path = Path(path)
    x, y = synthesize(generators, per_class, num_classes, seed)
    images, labels = to_uint8(x), y.numpy().astype(np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # np.savez on a path would append .npz to the temporary name
        np.savez_compressed(f, train_images=images, train_labels=labels)
    os.replace(tmp, path)
    sidecar = meta | {"format": "MedMNIST-style npz: train_images (N,H,W[,3]) uint8, train_labels (N,1) uint8",
                      "images": int(len(labels)), "per_class": per_class, "sampling_seed": seed,
                      "generators": len(generators)}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, default=str))
    return path
