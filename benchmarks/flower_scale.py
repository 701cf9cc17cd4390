"""What Flower costs: HF-GAN rounds in-process vs on Flower's simulation runtime, 5 / 20 / 100 hospitals.

Small IID partitions of PneumoniaMNIST (batch 16, so 100 hospitals of ~47 images each still
sample), the default models, epsilon = 10, one D step per round, the reference loop in both
runtimes (the per-hospital computation a ClientApp runs). Each size runs in-process and twice on
Flower (one virtual SuperNode per hospital, the ServerApp in this process), with the same seed:
with each hospital's generator in its Flower context (copied to the worker and back with every
message), and with it in a state folder (``--state-dir``: what a SuperNode's
``state-dir`` does). The three runs repeat ``--repeats`` times, interleaved, and the medians are
reported. The round time is the training wall time (setup and the final release excluded; on
Flower the last round's G steps take one more message, included) divided by the rounds. Bytes
per round: the arrays the server sends (D to every hospital it asks, once per D step) and
receives (the DP uploads), from Flower's own record sizes; message envelopes and contexts are
not counted. The last lines are the figures the README quotes:

    flower/in-process round time ratio at 20 hospitals: X.XX (generators in the context)
    flower/in-process round time ratio at 20 hospitals: X.XX (generators in a state folder)

Usage: python benchmarks/flower_scale.py [--hospitals 5 20 100] [--rounds 10] [--repeats 3] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from hfgan_core.flower.simulation import run_flower_simulation
from hfgan_core.train import TrainConfig, train


def config(hospitals: int, rounds: int, data_dir: str | None) -> TrainConfig:
    return TrainConfig(dataset="pneumoniamnist", data_dir=data_dir, clients=hospitals, partition="iid",
                       batch_size=16, min_client_size=16, rounds=rounds, d_steps=1, epsilon=10.0, accountant="rdp",
                       simulation_noise=True, engine="loop", synthetic_per_class=0, checkpoint_every=10**6)


def _train_s(run: Path) -> float:
    return json.loads((run / "timing.json").read_text())["train_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", nargs="+", type=int, default=[5, 20, 100])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the median is reported")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads in-process; Flower: one worker per core")
    print("| hospitals | in-process s/round | Flower s/round, G_i in context | ratio | Flower s/round, G_i in state "
          "folder | ratio | MB sent / round | MB received / round |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios: dict[str, dict[int, float]] = {"context": {}, "state folder": {}}
    work = Path(tempfile.mkdtemp(prefix="flower-scale-"))
    try:
        for k in args.hospitals:
            cfg = config(k, args.rounds, args.data_dir)
            times: dict[str, list[float]] = {"in-process": [], "context": [], "state folder": []}
            for rep in range(args.repeats):  # interleaved, so a busy spell of the machine slows all three
                train(cfg, work / f"inproc{k}-{rep}", progress=False)
                times["in-process"].append(_train_s(work / f"inproc{k}-{rep}") / args.rounds)
                for mode in ("context", "state folder"):
                    out = work / f"flower{k}-{mode}-{rep}".replace(" ", "-")
                    run_flower_simulation(cfg, out, state_dir=work / f"disk{k}" if mode == "state folder" else None)
                    times[mode].append(_train_s(out) / args.rounds)
            local = statistics.median(times["in-process"])
            row = [f"{k}", f"{local:.3f}"]
            for mode in ("context", "state folder"):
                ratios[mode][k] = statistics.median(times[mode]) / local
                row += [f"{statistics.median(times[mode]):.3f}", f"{ratios[mode][k]:.2f}"]
            timing = json.loads((out / "timing.json").read_text())
            sent, received = (timing[f"array_bytes_{w}"] / args.rounds / 1e6 for w in ("sent", "received"))
            print("| " + " | ".join(row + [f"{sent:.1f}", f"{received:.1f}"]) + " |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for mode, by_size in ratios.items():
        if 20 in by_size:
            print(f"flower/in-process round time ratio at 20 hospitals: {by_size[20]:.2f} (generators in the {mode})")

if __name__ == "__main__":
    main()
