"""Issue 11's rule, from a finished benchmark: does HF-GAN beat every control, paired?

HF-GAN's images help only where HF-GAN beats the null-image control *and* the equal-steps
control with a paired 95 % interval that excludes zero. This prints, for one benchmark folder
(its probas.npz), HF-GAN's paired difference in test accuracy and balanced accuracy against
FedAvg and each control (and, where the folder has it, the DP classifier at the same ε: the
private baseline for the synthetic-only row), with ``stats.paired_delta`` (seeds and test images: Student's t on the
seed differences plus a bootstrap of the test images).
Nothing is trained and the test split is not read again: the saved probabilities are scored.

    python benchmarks/paired_controls.py results/retinamnist [--epsilon 10]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from hfgan_core.benchmark import METHODS
from hfgan_core.benchmark.tables import PAIRED, probas_by_seed
from hfgan_core.stats import paired_delta

CONTROLS = ("fedavg", "fedavg_steps", "fedavg_balanced", "fedavg_null")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", help="a benchmark's output folder (runs.json, probas.npz)")
    ap.add_argument("--epsilon", type=float, default=10.0, help="HF-GAN's epsilon (the table's)")
    ap.add_argument("--method", default="hfgan", help="the row compared with the controls")
    args = ap.parse_args()
    saved = np.load(Path(args.bench_dir) / "probas.npz")
    y = saved["y_test"]
    mine = probas_by_seed(saved, args.method, args.epsilon)
    print(f"{METHODS[args.method].label} at eps = {args.epsilon:g} minus each row, paired on seeds and test images "
          "(mean over seeds, 95 % interval over seeds and test images):")
    for control, eps in [(c, math.inf) for c in CONTROLS] + [("dp_fedavg", args.epsilon)]:
        theirs = probas_by_seed(saved, control, eps)
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:  # the DP classifier's row is optional here
            continue
        cells = []
        for score, _, _, name in PAIRED:  # accuracy, balanced accuracy
            d = paired_delta(y, [mine[s] for s in seeds], [theirs[s] for s in seeds], score=score)
            cells.append(f"{name} {d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        at = "" if math.isinf(eps) else f" at eps = {eps:g}"
        print(f"  vs {METHODS[control].label}{at} (seeds {seeds}): " + "; ".join(cells))


if __name__ == "__main__":
    main()
