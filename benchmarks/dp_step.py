"""Speed of one discriminator step: plain vs our DP client step (vs Opacus hooks, for reference).

Same model (the default projection D with its AC-GAN head, the same loss), 28 px, 64 real +
64 fake images, Adam step included in every variant. The
variants run interleaved, several rounds each, and the median is reported, so a busy
machine slows all of them alike. The last line is the figure the README quotes:

    dp/plain speed ratio: X.XX      (DP steps/s divided by plain steps/s)

On CUDA (``--device cuda``) every call is followed by a synchronisation before the clock stops.

Usage: python benchmarks/dp_step.py [--repeats 5] [--steps 30] [--threads N] [--no-opacus] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from hfgan_core.client import Objective, discriminator_gradient, per_example_d_loss
from hfgan_core.clipping import PerExampleClipper
from hfgan_core.models import build_models

BATCH, SIZE, CLASSES = 64, 28, 2
OBJECTIVE = Objective()  # the default loss, AC-GAN term included


def make_batch(seed: int = 0, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    real = (torch.rand(BATCH, 1, SIZE, SIZE, generator=gen) * 2 - 1, torch.randint(CLASSES, (BATCH,), generator=gen))
    fake = (torch.rand(BATCH, 1, SIZE, SIZE, generator=gen) * 2 - 1, torch.randint(CLASSES, (BATCH,), generator=gen))
    return tuple(t.to(device) for t in real), tuple(t.to(device) for t in fake)


def plain_step(d, opt, real, fake):
    x, y = torch.cat([real[0], fake[0]]), torch.cat([real[1], fake[1]])
    opt.zero_grad(set_to_none=True)
    per_example_d_loss(d, x, y, BATCH, OBJECTIVE).mean().backward()
    opt.step()


def ours_step(d, opt, clipper, real, fake):
    grads, _ = discriminator_gradient(d, clipper, real, fake, normaliser=2.0 * BATCH, noise_multiplier=1.0,
                                      max_grad_norm=1.0, objective=OBJECTIVE)
    for p, g in zip(d.parameters(), grads):
        p.grad = g
    opt.step()


def opacus_step(gsm, opt, real, fake):
    """Opacus GradSampleModule (default hooks): per-example gradients, then the same clip + noise."""
    x, y = torch.cat([real[0], fake[0]]), torch.cat([real[1], fake[1]])
    opt.zero_grad(set_to_none=True)
    for p in gsm.parameters():
        p.grad_sample = None
    per_example_d_loss(gsm._module, x, y, BATCH, OBJECTIVE).sum().backward()
    samples = [p.grad_sample.flatten(1) for p in gsm.parameters()]
    norms = torch.cat(samples, dim=1).norm(dim=1)
    factors = (1.0 / (norms + 1e-6)).clamp(max=1.0)
    for p in gsm.parameters():
        p.grad = (torch.einsum("b,b...->...", factors, p.grad_sample) + torch.randn_like(p)) / (2.0 * BATCH)
    opt.step()


def time_it(fn, steps: int, device: str) -> float:
    """Steps per second over `steps` calls, after 3 warm-up calls."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-opacus", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device} asked for, but this machine has no CUDA GPU; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    real, fake = make_batch(device=args.device)
    _, d_plain = build_models(num_classes=CLASSES, channels=1, image_size=SIZE, aux_classifier=True)
    _, d_ours = build_models(num_classes=CLASSES, channels=1, image_size=SIZE, aux_classifier=True)
    d_plain, d_ours = d_plain.to(args.device), d_ours.to(args.device)
    variants = {
        "plain": (lambda d=d_plain, o=torch.optim.Adam(d_plain.parameters()): plain_step(d, o, real, fake)),
        "ours (DP)": (lambda d=d_ours, o=torch.optim.Adam(d_ours.parameters()),
                      c=PerExampleClipper(d_ours, max_grad_norm=1.0): ours_step(d, o, c, real, fake)),
    }
    if not args.no_opacus:
        from opacus import GradSampleModule
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus's hooks, harmless here
        _, d_op = build_models(num_classes=CLASSES, channels=1, image_size=SIZE, aux_classifier=True)
        d_op = d_op.to(args.device)
        gsm = GradSampleModule(d_op)
        variants["opacus hooks (DP)"] = lambda g=gsm, o=torch.optim.Adam(gsm.parameters()): opacus_step(g, o, real, fake)

    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            rates[name].append(time_it(fn, args.steps, args.device))
    params = sum(p.numel() for p in d_plain.parameters())
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"discriminator: {params} parameters, {BATCH} real + {BATCH} fake images of {SIZE}x{SIZE}, "
          f"torch {torch.__version__}, {where}")
    base = statistics.median(rates["plain"])
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:20s} {med:7.1f} steps/s  (min {min(values):.1f}, max {max(values):.1f})  "
              f"x{med / base:.2f} of plain")
    print(f"dp/plain speed ratio: {statistics.median(rates['ours (DP)']) / base:.2f}")


if __name__ == "__main__":
    main()
