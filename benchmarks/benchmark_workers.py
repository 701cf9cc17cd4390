"""Speed of a parallel benchmark run (``--workers N``) against one process, on the same settings.

Runs the benchmark twice into temporary folders, once in one process and once with N worker
processes, checks that both made the same rows (the tuned points and the numbers), and ends with

    workers/one-process benchmark speed ratio: X.XX

The one-process run gets the threads the workers share (``--threads`` each), so the ratio is what
running rows side by side buys on this machine, not extra threads. On a GPU the jobs share the card,
which one small model leaves mostly idle:

    python benchmarks/benchmark_workers.py --device cuda --workers 8 --profile smoke --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch

import hfgan_core.benchmark as bm
from hfgan_core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--methods", nargs="+", default=["all"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    methods = list(bm.METHODS) if args.methods == ["all"] else args.methods
    config = bm.BenchmarkConfig(dataset=args.dataset, methods=methods, seeds=args.seeds, profile=args.profile,
                                device=args.device)
    print(f"{args.dataset}, profile {args.profile}, {len(methods)} methods, seeds {args.seeds}, {args.device}; "
          f"{args.workers} workers x {args.threads} thread(s) against one process with {args.workers * args.threads}",
          flush=True)
    times, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers in (("one process", 1), (f"{args.workers} workers", args.workers)):
            torch.set_num_threads(args.threads * (args.workers if workers == 1 else 1))
            start = time.perf_counter()
            try:
                report = bm.run_benchmark(config, f"{tmp}/{workers}", progress=False, echo=False, workers=workers,
                                          threads=args.threads)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            times[name] = time.perf_counter() - start
            runs[name] = {(r["method"], r["seed"], r["epsilon"]): (r["hyperparameters"], r["auc"]) for r in report["runs"]}
            print(f"{name}: {len(report['runs'])} rows in {times[name]:.1f} s", flush=True)
    one, par = runs.values()
    differ = [k for k in one if k not in par or par[k][0] != one[k][0] or not math.isclose(par[k][1], one[k][1],
                                                                                             abs_tol=1e-9)]
    print(f"rows that differ: {len(differ)} of {len(one)}" + (f" (e.g. {differ[0]}: thread counts differ, so "
                                                              "float sums may)" if differ else ""))
    print(f"workers/one-process benchmark speed ratio: {times['one process'] / times[f'{args.workers} workers']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
