"""Train a benchmark's HF-GAN runs ahead of it, in another process, so the benchmark finds them done.

On a CPU the paper profile is slow, and one benchmark process uses one core well. The HF-GAN runs
of the later seeds need no tuning, so a second process can train them while the first tunes every
classifier on seed 0; the benchmark, run with ``--resume``, then reuses each finished run (or
continues a stopped one) instead of training it. This script calls the benchmark's own code for
it (``runner._hfgan``: the same config, run folder and checkpoints), under the same settings stamp:

    python -m hfgan_core benchmark --dataset retinamnist --methods all --seeds 0 1 2 3 4 \\
        --profile paper --epsilon 10 --out runs/retina --resume &
    python benchmarks/pretrain_gans.py --dataset retinamnist --seeds 1 2 3 4 --profile paper \\
        --epsilon 10 --out runs/retina

Give it seeds the benchmark process will not reach while this runs (two processes must not train
one run folder at once). A folder that holds results of other settings or code is refused, as by
``--resume``. The time
spent here is recorded as one more invocation of the run (``runs.json`` → ``invocations``), so the
table's wall time counts it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from hfgan_core.benchmark import PROFILES, BenchmarkConfig, provenance, runner
from hfgan_core.benchmark.units import Units
from hfgan_core.errors import UserError


def pretrain(config: BenchmarkConfig, out: Path) -> list[dict]:
    """Train (or continue) HF-GAN for every (seed, epsilon) of ``config``; one summary per run."""
    prof = PROFILES[config.profile]
    # the profile exactly as run_benchmark adjusts it: it is part of the settings stamp
    if config.synthetic_ratio is not None:
        prof = replace(prof, synthetic_ratio=config.synthetic_ratio)
    if config.mu is not None:
        prof = replace(prof, mu=config.mu)
    if config.gan_rounds is not None:
        prof = replace(prof, gan=prof.gan | {"rounds": config.gan_rounds}, gan_epochs=None)
    ds = runner._load(config, prof)
    units = Units(out / "units", runner._stamp(config, prof, ds), resume=True, provenance=provenance(config.device))
    done = []
    for seed in config.seeds:
        for eps in config.epsilons:
            _, spent, train_s = runner._hfgan(config, prof, ds, seed, eps, out, False, resume=True)
            done.append({"seed": seed, "epsilon": eps, "spent": spent, "train_s": train_s})
            units.invocations()  # this process's wall time so far, in the run's record
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--profile", default="paper", choices=sorted(PROFILES))
    ap.add_argument("--epsilon", type=float, nargs="+", default=[10.0])
    ap.add_argument("--out", type=Path, required=True, help="the benchmark's --out folder")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    config = BenchmarkConfig(dataset=args.dataset, methods=["hfgan"], seeds=args.seeds, profile=args.profile,
                             epsilons=args.epsilon, data_dir=args.data_dir, device=args.device)
    try:
        runner._check(config)
        for run in pretrain(config, args.out):
            print(f"seed {run['seed']}, eps {run['epsilon']:g}: spent eps {run['spent']:.3f}, "
                  f"trained in {run['train_s']:.0f} s", flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
