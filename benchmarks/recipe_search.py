"""Recipe search for HF-GAN's generators, scored on the *validation* split only.

Each recipe is a full set of recipe settings (below, not relative to today's defaults, so old
lines stay meaningful when the defaults move). A run trains HF-GAN (5 hospitals, Dirichlet
alpha = 0.5) on one dataset at one epsilon and seed, then judges the released generators with
``quality.generator_quality``: TSTR (a classifier trained on synthetic images only, scored on
real validation images), CAS, FID and per-class precision / recall / coverage. One JSON line
per run is appended to ``results/recipe_search/generators.jsonl`` with the config, the scores,
the accounted epsilon, wall time, machine and git commit.

Usage:
    python benchmarks/recipe_search.py --list
    python benchmarks/recipe_search.py NAME [NAME ...] [--dataset pneumoniamnist] [--epsilon 10]
                                       [--seed 0] [--threads 1]
    python benchmarks/recipe_search.py --table      # markdown table of everything recorded
    python benchmarks/recipe_search.py --compare A B [--dataset D] [--epsilon 10]   # paired by seed
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from hfgan_core.benchmark import jsonable, provenance
from hfgan_core.data import load_dataset
from hfgan_core.errors import UserError
from hfgan_core.extractor import load_or_train_extractor
from hfgan_core.quality import generator_quality
from hfgan_core.train import TrainConfig, train

# Session 1's recipe, spelled out: every later recipe states what it changes.
SESSION1 = dict(rounds=300, d_steps=1, g_steps=1, batch_size=64, lr_d=1e-3, lr_g=1e-3, aux_weight=1.0,
                g_aux_weight=None, loss="ns", mode_seeking=0.0, g_ema=0.99, fakes=None, beta1_d=0.5, ndf=32,
                smoothness=0.0, upsample="deconv", diffaugment=False)
RECIPES: dict[str, dict] = {
    "s1-2000": SESSION1 | dict(rounds=2000),  # the same recipe given the steps a GAN needs
    "ms": SESSION1 | dict(rounds=2000, mode_seeking=1.0),  # + mode seeking on G (free: no real data)
    "d5-ms": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0),  # 5 D steps per G step, same D steps
    "d5-ms-f4": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, fakes=256),  # more fakes: less noise
    "d5-ms-r800": SESSION1 | dict(rounds=800, d_steps=5, mode_seeking=1.0),  # twice the D steps
    "d5-ms-hinge": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, loss="hinge"),
    "d5-ms-gaux0.3": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, g_aux_weight=0.3),
    "d5-ms-g2": SESSION1 | dict(rounds=400, d_steps=5, g_steps=2, mode_seeking=1.0),
    "d5-ms-m9": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9),  # momentum averages noise
    "d5-ms-ndf16": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, ndf=16),  # 4x fewer D weights: less noise
    "d5-ms-m9-r200": SESSION1 | dict(rounds=200, d_steps=5, mode_seeking=1.0, beta1_d=0.9),  # half the D steps
    "d5-ms-m9-ndf16": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, ndf=16),
    "d5-ms-m9-f128": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, fakes=128),
    "d5-ms-m9-r100": SESSION1 | dict(rounds=100, d_steps=5, mode_seeking=1.0, beta1_d=0.9),  # a quarter of the D steps
    "d5-ms-m9-r800": SESSION1 | dict(rounds=800, d_steps=5, mode_seeking=1.0, beta1_d=0.9),  # twice the D steps
    "d5-ms-m9-tv": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, smoothness=1.0),
    "d5-ms-m9-nn": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, upsample="nearest"),
    # Larger batches, fewer D steps (Bie et al. 2023): at epsilon 10 a 256 batch over 500 steps halves the noise
    # per step against 64 over 2,000, for the same examples seen; G steps cost no privacy, so G keeps ~400-500.
    "b256-d5-g4": SESSION1 | dict(rounds=100, d_steps=5, g_steps=4, batch_size=256, mode_seeking=1.0, beta1_d=0.9),
    "b256-d1": SESSION1 | dict(rounds=500, d_steps=1, g_steps=1, batch_size=256, mode_seeking=1.0, beta1_d=0.9),
    # nearest-neighbour G (best CAS and coverage on brain MRI at epsilon 10) with twice the fakes per D step:
    # fakes cost no privacy, and the normaliser q N + B grows with them, so the noise per step shrinks
    "d5-ms-m9-nn-f128": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, upsample="nearest",
                                        fakes=128),
    # half the D steps gave brain MRI the best TSTR at epsilon 10 (less noise per step) but collapsed coverage;
    # nearest-neighbour G gave the best coverage: together, and with G given back the steps it lost
    "d5-ms-m9-r200-nn": SESSION1 | dict(rounds=200, d_steps=5, mode_seeking=1.0, beta1_d=0.9, upsample="nearest"),
    "d5-ms-m9-r200-nn-g2": SESSION1 | dict(rounds=200, d_steps=5, g_steps=2, mode_seeking=1.0, beta1_d=0.9,
                                           upsample="nearest"),
    # Many D steps per G step at the same 2,000 DP steps per hospital (Bie et al. 2023 restore G/D parity under
    # DP with n_D up to 50): D averages more noisy steps between two G steps, and G takes fewer, better-informed ones
    "d10-ms-m9-r200": SESSION1 | dict(rounds=200, d_steps=10, mode_seeking=1.0, beta1_d=0.9),
    "d20-ms-m9-r100": SESSION1 | dict(rounds=100, d_steps=20, mode_seeking=1.0, beta1_d=0.9),
    # DiffAugment (Zhao et al. 2020): D sees real and fake images shifted and cut out, in D's and G's steps; a
    # per-example transform, so the clipping bound and the privacy cost are unchanged
    "d5-ms-m9-da": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, diffaugment=True),
    "ms-da": SESSION1 | dict(rounds=2000, mode_seeking=1.0, diffaugment=True),  # without DP
    # A generator twice as wide: G's steps read no real data, so its size costs no privacy; does a larger G
    # make more of the same noisy D?
    "d5-ms-m9-ngf64": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, ngf=64),
    # Per-layer clipping: D's per-example gradient norms are 100-500x C, and its heads (real/fake, class,
    # projection) hold < 1 % of the squared norm, so global clipping scales their signal down to almost
    # nothing while the noise per coordinate stays; each layer clipped to C / sqrt(6) keeps their share.
    "d5-ms-m9-pl": SESSION1 | dict(rounds=400, d_steps=5, mode_seeking=1.0, beta1_d=0.9, clip_per_layer=True),
}
OUT = Path("results/recipe_search/generators.jsonl")


def run_recipe(name: str, dataset: str, epsilon: float, seed: int, runs_dir: Path) -> dict:
    config = TrainConfig(**(RECIPES[name] | dict(dataset=dataset, epsilon=epsilon, seed=seed, clients=5,
                                                 partition="dirichlet", alpha=0.5, delta=1e-5,
                                                 simulation_noise=True)))
    prov = provenance("cpu")
    started = time.time()
    ds = load_dataset(dataset)
    run = train(config, runs_dir / f"{name}-{dataset}-eps{epsilon}-seed{seed}", progress=False, dataset=ds)
    train_s = time.time() - started
    dev = replace(ds, test=None)  # nothing below reads the test split
    extractor, _ = load_or_train_extractor(dev, epochs=5)
    scores = generator_quality([c.sampler for c in run.clients], dev, extractor)
    eps = [c.budget.epsilon for c in run.clients if c.budget]
    return {"recipe": name, "dataset": dataset, "epsilon": epsilon, "seed": seed, "config": asdict(config),
            "val": scores, "max_epsilon": max(eps) if eps else math.inf, "train_s": train_s,
            "wall_time_s": time.time() - started, "hardware": prov["hardware"], "git": prov["git_sha"]}


def table(path: Path) -> str:
    rows = ["| recipe | dataset | ε | seed | TSTR AUC | TSTR macro-F1 | CAS | FID | coverage per class "
            "| max ε | train time |", "|" + " --- |" * 11]
    for line in map(json.loads, path.read_text().splitlines()):
        v = line["val"]
        eps = float(line["max_epsilon"])
        rows.append(f"| {line['recipe']} | {line['dataset']} | {line['epsilon']} | {line['seed']} | "
                    f"{v['tstr']['auc']:.3f} | {v['tstr']['macro_f1']:.3f} | {v['cas']:.3f} | {v['fid']:.3f} | "
                    f"{' / '.join(f'{c:.2f}' for c in v['coverage'])} | {'∞' if math.isinf(eps) else f'{eps:.2f}'} | "
                    f"{line['train_s'] / 60:.1f} min |")
    return "\n".join(rows)


def compare(path: Path, a: str, b: str, dataset: str, epsilon: float) -> str:
    """Recipe a minus recipe b on the seeds both ran (the latest record of each), per seed and as a
    mean with a 95 % Student-t interval over seeds: the paired difference a claim of "a helps" needs."""
    from scipy import stats as st
    latest: dict[tuple[str, int], dict] = {}
    for line in map(json.loads, path.read_text().splitlines()):
        if line["dataset"] == dataset and float(line["epsilon"]) == epsilon and line["recipe"] in (a, b):
            latest[(line["recipe"], line["seed"])] = line["val"]
    seeds = sorted({s for r, s in latest if r == a} & {s for r, s in latest if r == b})
    if not seeds:
        raise UserError(f"no seed of {dataset} at epsilon {epsilon:g} has records of both '{a}' and '{b}'")
    scores = {"TSTR AUC": lambda v: v["tstr"]["auc"], "TSTR macro-F1": lambda v: v["tstr"]["macro_f1"],
              "CAS": lambda v: v["cas"], "worst coverage": lambda v: min(v["coverage"])}
    out = [f"{a} minus {b}, {dataset}, epsilon {epsilon:g}, seeds {seeds} (paired by seed; 95 % t interval)"]
    for name, f in scores.items():
        d = [f(latest[(a, s)]) - f(latest[(b, s)]) for s in seeds]
        mean = sum(d) / len(d)
        if len(d) > 1:
            half = st.t.ppf(0.975, len(d) - 1) * st.tstd(d) / math.sqrt(len(d))
            ci = f"[{mean - half:+.3f}, {mean + half:+.3f}]"
        else:
            ci = "(one seed: no interval)"
        per = ", ".join(f"{f(latest[(a, s)]):.3f} vs {f(latest[(b, s)]):.3f}" for s in seeds)
        out.append(f"  {name:15s} {mean:+.3f} {ci}   per seed: {per}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--epsilon", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="paired difference A - B over the seeds both ran")
    args = parser.parse_args()
    if args.table:
        print(table(OUT))
        return
    if args.compare:
        try:
            print(compare(OUT, *args.compare, args.dataset, args.epsilon))
        except UserError as exc:
            sys.exit(f"error: {exc}")
        return
    if args.list or not args.names:
        for name, recipe in RECIPES.items():
            print(f"{name:16s} {', '.join(f'{k}={v}' for k, v in recipe.items() if SESSION1.get(k) != v) or 'session 1'}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        if name not in RECIPES:
            sys.exit(f"error: unknown recipe '{name}'; --list shows them")
        try:
            line = run_recipe(name, args.dataset, args.epsilon, args.seed, Path("results/runs/recipe_search"))
        except UserError as exc:
            sys.exit(f"error: {exc}")
        with open(OUT, "a") as f:
            f.write(json.dumps(jsonable(line)) + "\n")
        v = line["val"]
        print(f"{name} {args.dataset} eps={args.epsilon} seed {args.seed}: TSTR AUC {v['tstr']['auc']:.3f}, "
              f"macro-F1 {v['tstr']['macro_f1']:.3f}, CAS {v['cas']:.3f}, coverage "
              f"{[round(c, 2) for c in v['coverage']]}, {line['train_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
