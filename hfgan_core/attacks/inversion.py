"""Gradient inversion of one hospital's upload (Inverting Gradients, Geiping et al. 2020): the
server, who knows D, searches for images whose D-loss gradient points the way the upload does.
Per-example clipping only rescales a lone example's gradient; the noise is what defends."""
from __future__ import annotations

import torch

from ..client import Objective, per_example_d_loss, total_variation


def invert_upload(discriminator: torch.nn.Module, upload: list[torch.Tensor], labels: torch.Tensor, *,
                  image_shape: tuple[int, int, int], steps: int = 400, lr: float = 0.05, tv_weight: float = 1e-3,
                  objective: Objective = Objective(), seed: int = 0) -> torch.Tensor:
    """Images x (len(labels), C, H, W) in [-1, 1] whose summed real-image D loss has a gradient of
    the same direction as ``upload`` (cosine distance, plus a total-variation prior), found by Adam
    from uniform noise. The attacker knows D, the labels and how many images the batch holds: a
    strong server. Per-example clipping only rescales a lone example's gradient, so for one image
    noise is the only defence."""
    params = list(discriminator.parameters())
    target = [u.detach() for u in upload]
    target_norm = torch.sqrt(sum((t ** 2).sum() for t in target))
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(len(labels), *image_shape, generator=gen) * 2 - 1).to(labels.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        losses = per_example_d_loss(discriminator, x, labels, len(labels), objective)  # all "real"
        grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, target))
        cosine = dot / (torch.sqrt(sum((g ** 2).sum() for g in grads)) * target_norm + 1e-12)
        opt.zero_grad(set_to_none=True)
        (1 - cosine + tv_weight * total_variation(x).mean()).backward(inputs=[x])
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
    return x.detach()


def reconstruction_quality(reconstructed: torch.Tensor, original: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, images in [-1, 1]) and SSIM (torchmetrics) of a reconstruction, mean over images."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    a, b = (reconstructed + 1) / 2, (original + 1) / 2  # to [0, 1]
    mse = ((a - b) ** 2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-12))).mean()
    return {"psnr": float(psnr), "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0))}
