"""Speed of a whole HF-GAN round: the per-hospital reference loop vs the batched engine.

5 hospitals (PneumoniaMNIST, Dirichlet alpha = 0.5), 28 px, the default models and recipe,
epsilon = 10 (per-example clipping and noise on), d_steps and g_steps as configured. Both engines
run on twin runs (same seed), interleaved: a few rounds of one, then of the other, several times,
and the median rounds/s of each is reported, so a busy machine slows both alike. On a machine
with CUDA the same is repeated on the GPU. The last line is the figure the README quotes:

    batched/loop round speed ratio: X.XX      (CPU; rounds/s of batched divided by the loop's)

With ``--profile`` it then profiles a few batched rounds per device (torch.profiler) and prints
the ops that take the most time, host and device: where a round's time goes.

Usage: python benchmarks/round_speed.py [--repeats 5] [--rounds 10] [--threads N] [--devices cpu cuda]
                                        [--data-dir DIR] [--profile]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hfgan_core import engine
from hfgan_core.data import load_dataset
from hfgan_core.errors import UserError
from hfgan_core.train import TrainConfig, setup, train_round


def rounds_per_second(step, run, rounds: int) -> float:
    if run.config.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        step(run)
    if run.config.device.startswith("cuda"):
        torch.cuda.synchronize()
    return rounds / (time.perf_counter() - start)


def round_config(device: str, rounds: int) -> TrainConfig:
    """The timed setting: 5 hospitals of PneumoniaMNIST, the default recipe at epsilon = 10; twin runs
    draw the same noise (simulation_noise)."""
    return TrainConfig(dataset="pneumoniamnist", clients=5, alpha=0.5, epsilon=10.0, rounds=rounds,
                       accountant="rdp", device=device, simulation_noise=True)


def measure(device: str, repeats: int, rounds: int, data_dir: str | None) -> dict[str, float]:
    ds = load_dataset("pneumoniamnist", data_dir)
    total = 3 + repeats * rounds  # warm-up rounds + timed rounds, per engine
    config = round_config(device, total)
    runs = {"loop": setup(config, ds), "batched": setup(config, ds)}
    steps = {"loop": train_round, "batched": engine.train_round}
    for name, run in runs.items():  # warm-up: allocator, kernels, first-call costs
        rounds_per_second(steps[name], run, 3)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rates[name].append(rounds_per_second(steps[name], run, rounds))
    return {name: statistics.median(values) for name, values in rates.items()}


def profile(device: str, data_dir: str | None, rounds: int = 5) -> None:
    """Print the top ops of a few batched rounds: launch-bound (host time >> device time) or not."""
    from torch.profiler import ProfilerActivity
    run = setup(round_config(device, rounds + 3), load_dataset("pneumoniamnist", data_dir))
    for _ in range(3):
        engine.train_round(run)
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(rounds):
            engine.train_round(run)
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    print(f"== profile of {rounds} batched rounds on {device}")
    print(events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=15))
    if cuda:
        launches = sum(e.count for e in events if e.key == "cudaLaunchKernel")
        print(f"kernel launches per round: {launches / rounds:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per timing")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--profile", action="store_true", help="then profile a few batched rounds per device")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = {device: measure(device, args.repeats, args.rounds, args.data_dir) for device in args.devices}
    except UserError as exc:
        raise SystemExit(f"error: {exc}")
    if args.profile:
        for device in args.devices:
            profile(device, args.data_dir)
    print(f"HF-GAN rounds: 5 hospitals, 28 px, default models, epsilon = 10; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    for device, r in results.items():
        name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
        print(f"{device:5s} ({name}): loop {r['loop']:6.2f} rounds/s   batched {r['batched']:6.2f} rounds/s   "
              f"ratio {r['batched'] / r['loop']:.2f}")
    if "cpu" in results:
        print(f"batched/loop round speed ratio: {results['cpu']['batched'] / results['cpu']['loop']:.2f}")


if __name__ == "__main__":
    main()
