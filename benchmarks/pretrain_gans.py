"""Train a benchmark's HF-GAN runs ahead of it, in another process, so the benchmark finds them done.

On a CPU the paper profile is slow, and one benchmark process uses one core well. The HF-GAN runs
of the later seeds need no tuning, so a second process can train them while the first tunes every
classifier on seed 0. This script takes the benchmark's own flags and trains, through the
benchmark's own code (``runner._hfgan``: the same config, run folder and checkpoints), the HF-GAN
run of every seed and epsilon they name (``--curve-epsilon`` too where the profile draws the
curve on every seed, as ``paper`` does):

    python benchmarks/pretrain_gans.py --dataset retinamnist --seeds 1 2 3 4 --profile paper --out runs/retina
    # once it prints "stamp ready" (seconds):
    python -m hfgan_core benchmark --dataset retinamnist --seeds 0 1 2 3 4 --profile paper --out runs/retina --resume

Order matters: the benchmark reuses finished GAN runs only when it starts with ``--resume`` on a
folder whose stamp (settings, profile, data, code) already exists, which this script writes first;
a benchmark started before it would train those runs again. Give it seeds the benchmark will not
reach while it runs (two processes must not train one run folder). A folder holding a run of other
settings or code is refused. Its time counts as one more invocation of the run (``runs.json``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hfgan_core.__main__ import _parser, benchmark_config
from hfgan_core.benchmark import BenchmarkConfig, jsonable, provenance, run_profile, runner
from hfgan_core.benchmark.units import Units
from hfgan_core.errors import UserError


def pretrain(config: BenchmarkConfig, out: Path, *, echo=print) -> list[dict]:
    """Train (or continue, or find finished) HF-GAN for every (seed, epsilon) ``config`` would run."""
    runner._check(config)
    prof = run_profile(config)  # the profile exactly as run_benchmark adjusts it: it is part of the stamp
    ds = runner._load(config, prof)
    stamp = jsonable(runner._stamp(config, prof, ds))
    saved = out / "units" / "stamp.json"
    if saved.exists() and (old := json.loads(saved.read_text())) != stamp:
        changed = sorted(k for k in set(old) | set(stamp) if old.get(k) != stamp.get(k))
        raise UserError(f"{out} holds a run made with other {', '.join(changed)}; give this script the benchmark's "
                        "own flags (and code), or another --out")
    units = Units(out / "units", stamp, resume=True, provenance=provenance(config.device))
    echo(f"stamp ready in {saved}: start the benchmark with --resume now")
    # curve epsilons only where the profile draws the curve on every seed (paper); elsewhere it is the
    # benchmark's first seed, which the benchmark process reaches first anyway
    curve = config.curve_epsilons if "hfgan" in config.methods and prof.curve_seeds is None else []
    done = []
    try:
        for seed in config.seeds:
            for eps in config.epsilons + curve:
                _, spent, train_s = runner._hfgan(config, prof, ds, seed, eps, out, False, resume=True,
                                                  stamp=units.stamp)
                done.append({"seed": seed, "epsilon": eps, "spent": spent, "train_s": train_s})
                echo(f"seed {seed}, eps {eps:g}: spent eps {spent:.3f}, trained in {train_s:.0f} s")
    finally:
        units.invocations()  # this process's wall time, in the run's record (also when stopped)
    return done


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(["benchmark", *(sys.argv[1:] if argv is None else argv)])
    try:
        pretrain(benchmark_config(args), Path(args.out), echo=lambda line: print(line, flush=True))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
