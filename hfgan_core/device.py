"""Where a run's tensors live: the ``--device`` check, and float32 kept exact on GPUs.

Per-example clipping bounds each example's gradient norm by C, and the noise is calibrated to that
bound. On Ampere and later GPUs cuDNN runs float32 convolutions in TF32 by default (10-bit
mantissa), so the norms that set the clip factors and the gradients they scale could disagree by
about 1e-3 relative, and the batched engine's uploads would differ from the reference loop's by
as much (seen on an H200). A run on CUDA therefore turns TF32 off for the whole process (at
28 px the convolutions are too small for TF32 to buy speed), and the clipper turns it off while
it clips, whoever calls it.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import UserError


def require_device(device: str) -> None:
    """Raise a one-line UserError if ``device`` is not cpu, cuda or cuda:<index>, or is a CUDA device
    this machine does not have; on CUDA, keep float32 matmuls and convolutions in float32."""
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if match is None:
        raise UserError(f"--device must be cpu, cuda, cuda:<index> or auto (got {device!r})")
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but this machine has no CUDA GPU; use --device cpu")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off inside the block (cuDNN convolutions and cuBLAS matmuls), as it was after it."""
    cudnn, cublas = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, cublas.allow_tf32
    cudnn.allow_tf32 = cublas.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, cublas.allow_tf32 = saved
