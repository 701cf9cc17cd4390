"""How often does the tables' paired interval (``stats.paired_delta``) cover the true difference?

A simulation of the benchmark's crossed design, where the truth is known: two methods scored on
the same N test images for S seeds, the per-example score difference of seed s on image i being
a_s + b_i + e_si (a seed effect, an image effect shared by every seed, their interaction), with
true mean difference 0. Each replicate draws a, b and e, computes the interval exactly as the
tables do (the score is the mean difference over the images) and checks whether it holds 0.
A nominal 95 % interval should cover about 0.95 of the time; below that it runs narrow.

    python benchmarks/delta_coverage.py [--replicates 400] [--boot 200] [--out results/delta_coverage.json]

The effect sizes (sd of a, b, e) are set to the scale of the retina table's accuracy differences
(seed sd 0.05, image sd 0.27, interaction sd 0.36) and to a case without an image effect.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats as st

from hfgan_core.stats import paired_delta

CASES = {"retina-like": (0.05, 0.27, 0.36), "no image effect": (0.05, 0.0, 0.30)}  # sd of a_s, b_i, e_si


def coverage(seeds: int, sds: tuple[float, float, float], *, n: int, replicates: int, boot: int,
             rng: np.random.Generator) -> tuple[float, float]:
    """Coverage of paired_delta's interval and of a plain t interval over the per-seed means."""
    sa, sb, se = sds
    labels = np.zeros(n, dtype=int)
    zeros = [np.zeros((1, n))] * seeds  # method b's "probabilities": the score below reads only a
    hit = hit_t = 0
    for r in range(replicates):
        d = rng.normal(0, sa, seeds)[:, None] + rng.normal(0, sb, n)[None] + rng.normal(0, se, (seeds, n))  # (S, N)
        res = paired_delta(labels, [d[s][None] for s in range(seeds)], zeros,
                           score=lambda y, p: float(p.mean()), n_boot=boot, seed=r)
        hit += res["low"] <= 0 <= res["high"]
        ci = st.ttest_1samp(d.mean(1), 0).confidence_interval(0.95)
        hit_t += ci.low <= 0 <= ci.high
    return hit / replicates, hit_t / replicates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=400)
    ap.add_argument("--boot", type=int, default=200, help="test-image resamples per interval (the tables: 1,000)")
    ap.add_argument("--images", type=int, default=400, help="test images (retina: 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    rng, started, rows = np.random.default_rng(args.seed), time.time(), []
    for name, sds in CASES.items():
        for seeds in (2, 3, 5):
            cov, cov_t = coverage(seeds, sds, n=args.images, replicates=args.replicates, boot=args.boot, rng=rng)
            se = (cov * (1 - cov) / args.replicates) ** 0.5
            rows.append({"case": name, "sds": sds, "seeds": seeds, "coverage": cov, "coverage_se": se,
                         "plain_t_coverage": cov_t})
            print(f"{name:16s} seeds {seeds}: paired_delta covers {cov:.3f} (± {se:.3f}); "
                  f"a plain t over seed means {cov_t:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows,
                                              "wall_time_s": time.time() - started}, indent=1) + "\n")


if __name__ == "__main__":
    main()
