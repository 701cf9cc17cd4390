"""Recipe search for HF-GAN under DP, scored on the *validation* split only.

Each recipe trains HF-GAN (PneumoniaMNIST, 5 hospitals, Dirichlet alpha=0.5, epsilon=10 per
hospital unless the recipe says otherwise), then trains a classifier on the generators' images
alone and scores it on real validation images. One JSON line per recipe is appended to
``results/recipe_search/pneumoniamnist.jsonl`` with the config, the scores, the accounted
epsilon, wall time and the machine, so the README table can be rebuilt from it.

Usage:
    python benchmarks/recipe_search.py --list
    python benchmarks/recipe_search.py NAME [NAME ...] [--threads 1] [--seed 0]
    python benchmarks/recipe_search.py --table      # markdown table of everything recorded
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from hfgan_core.errors import UserError
from hfgan_core.evaluate import train_on_synthetic
from hfgan_core.train import TrainConfig, train

BASE = dict(dataset="pneumoniamnist", clients=5, partition="dirichlet", alpha=0.5, epsilon=10.0, delta=1e-5)
# The chosen recipe is TrainConfig's default ("chosen"); the others change one or two things.
RECIPES: dict[str, dict] = {
    "chosen": dict(),  # AC-GAN head (aux_weight 1), generator EMA 0.99, Adam lr 1e-3 for D and G, 300 rounds
    "chosen-no-dp": dict(epsilon=float("inf")),
    "dcgan": dict(aux_weight=0.0, g_ema=0.0, lr_d=2e-4, lr_g=2e-4),  # the plain method with DCGAN settings
    "aux-ema-lr2e-4": dict(lr_d=2e-4, lr_g=2e-4),
    "lr-d-only": dict(lr_g=2e-4),
    "histogram-labels": dict(fake_labels="histogram"),
    "nearest-upsampling": dict(upsample="nearest"),
    "ndf16": dict(ndf=16),
    "batch128": dict(batch_size=128),
    "d5-r150": dict(d_steps=5, rounds=150),
}


def run_recipe(name: str, seed: int, out_root: Path) -> dict:
    config = TrainConfig(**(BASE | RECIPES[name] | {"seed": seed}))
    started = time.time()
    run = train(config, out_root / f"{name}-seed{seed}", progress=False)
    scores = train_on_synthetic([c.sampler for c in run.clients], run.dataset, seed=seed)
    eps = [c.budget.epsilon for c in run.clients if c.budget]
    return {"recipe": name, "seed": seed, "config": {k: v for k, v in vars(config).items()},
            "val": scores, "max_epsilon": max(eps) if eps else None, "wall_time_s": time.time() - started,
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__}


def table(path: Path) -> str:
    """Markdown table; 'settings' lists what differs from TrainConfig's defaults."""
    defaults = vars(TrainConfig(**BASE))
    rows = ["| recipe | seed | settings (vs defaults) | val accuracy | accuracy, cross-fitted threshold | "
            "val macro-F1 | val AUC | max epsilon | wall time |", "| --- " * 9 + "|"]
    for line in map(json.loads, path.read_text().splitlines()):
        v = line["val"]
        eps = "inf (no DP)" if line["max_epsilon"] is None else f"{line['max_epsilon']:.2f}"
        diff = {k: val for k, val in line["config"].items()
                if k not in ("seed", "data_dir") and str(val) != str(defaults.get(k))}
        settings = ", ".join(f"{k}={val}" for k, val in diff.items()) or "defaults"
        crossfit = f"{v['accuracy_crossfit']:.3f}" if "accuracy_crossfit" in v else "n/a"
        rows.append(f"| {line['recipe']} | {line['seed']} | {settings} | {v['accuracy']:.3f} ± {v['accuracy_sd']:.3f} "
                    f"| {crossfit} | {v['macro_f1']:.3f} ± {v['macro_f1_sd']:.3f} | {v['auc']:.3f} ± "
                    f"{v['auc_sd']:.3f} | {eps} | {line['wall_time_s'] / 60:.1f} min |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="results/recipe_search")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.out) / "pneumoniamnist.jsonl"))
        return
    if args.list or not args.names:
        for name, recipe in RECIPES.items():
            print(f"{name:22s} {recipe}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        if name not in RECIPES:
            sys.exit(f"error: unknown recipe '{name}'; --list shows them")
        try:
            line = run_recipe(name, args.seed, Path("results/runs/recipe_search"))
        except UserError as exc:
            sys.exit(f"error: {exc}")
        with open(out / "pneumoniamnist.jsonl", "a") as f:
            f.write(json.dumps(line, default=str) + "\n")
        v = line["val"]
        print(f"{name}: val acc {v['accuracy']:.3f} (majority {v['majority_rate']:.3f}), macro-F1 "
              f"{v['macro_f1']:.3f}, AUC {v['auc']:.3f}, eps {line['max_epsilon']}, {line['wall_time_s']:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
