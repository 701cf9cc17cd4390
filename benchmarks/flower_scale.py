"""What Flower costs: HF-GAN rounds in-process vs on Flower's simulation runtime, 5 / 20 / 100 hospitals.

Small IID partitions of PneumoniaMNIST (batch 16, so 100 hospitals of ~47 images each still
sample), the default models, epsilon = 10, one D step per round, the reference loop in both
runtimes (the per-hospital computation a ClientApp runs). Each size runs once in-process and
once on Flower (one virtual SuperNode per hospital, the ServerApp in this process), with the
same seed; the round time is the training wall time (setup and the final release excluded)
divided by the rounds. Bytes per round: the arrays the server sends (D to every selected
hospital, before each D step and the G step) and receives (the DP uploads), from Flower's own
record sizes; message envelopes are not counted. The last line is the figure the README quotes:

    flower/in-process round time ratio at 20 hospitals: X.XX

Usage: python benchmarks/flower_scale.py [--hospitals 5 20 100] [--rounds 3] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hfgan_core.flower.simulation import run_flower_simulation
from hfgan_core.train import TrainConfig, train


def config(hospitals: int, rounds: int, data_dir: str | None) -> TrainConfig:
    return TrainConfig(dataset="pneumoniamnist", data_dir=data_dir, clients=hospitals, partition="iid",
                       batch_size=16, min_client_size=16, rounds=rounds, d_steps=1, epsilon=10.0, accountant="rdp",
                       simulation_noise=True, engine="loop", synthetic_per_class=0, checkpoint_every=10**6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", nargs="+", type=int, default=[5, 20, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads in-process; Flower: one worker per core")
    print("| hospitals | in-process s/round | Flower s/round | Flower / in-process | MB sent / round | MB received / round |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = {}
    work = Path(tempfile.mkdtemp(prefix="flower-scale-"))
    try:
        for k in args.hospitals:
            cfg = config(k, args.rounds, args.data_dir)
            train(cfg, work / f"inproc{k}", progress=False)
            local = json.loads((work / f"inproc{k}" / "timing.json").read_text())["train_s"] / args.rounds
            started = time.perf_counter()
            run_flower_simulation(cfg, work / f"flower{k}")
            timing = json.loads((work / f"flower{k}" / "timing.json").read_text())
            flower = timing["train_s"] / args.rounds
            ratios[k] = flower / local
            sent, received = (timing[f"array_bytes_{w}"] / args.rounds / 1e6 for w in ("sent", "received"))
            print(f"| {k} | {local:.3f} | {flower:.3f} | {ratios[k]:.2f} | {sent:.1f} | {received:.1f} |"
                  f"  (Flower run incl. start-up: {time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if 20 in ratios:
        print(f"flower/in-process round time ratio at 20 hospitals: {ratios[20]:.2f}")


if __name__ == "__main__":
    main()
