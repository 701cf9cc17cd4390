"""Exploration (session 27): warm-start HF-GAN from a GAN trained on *public* data, then DP-train it.

The lever the recipe table lists as untried. Public pretraining is what most lifts DP image
generators in the literature: D then starts with features that separate medical images from
noise, and its noisy DP steps only have to adapt them. Here the public data is another dataset,
PneumoniaMNIST (chest X-ray, public), for brain MRI: no brain MRI record is read before the DP
training, so the brain MRI hospitals' epsilon is unchanged.

1. A non-private HF-GAN on PneumoniaMNIST (the epsilon = inf recipe `ms`, ROUNDS rounds, seed 0),
   trained once.
2. For each seed: the brain MRI recipe `d5-ms-m9` at epsilon = 10, with D's and every G_i's weights
   copied from the public run where the shapes agree (D's convolutions and real/fake head; G's
   projection, upsampling and BatchNorm). The class-dependent parts (D's projection embedding and
   AC-GAN head, G's label embedding: 2 classes there, 4 here) keep their fresh initialisation, and
   the optimizers start fresh.
3. Judged on validation exactly as `benchmarks/recipe_search.py` judges (in-domain extractor,
   5 epochs; `quality.generator_quality`). The baseline is the recipe's own records in
   generators.jsonl (`d5-ms-m9`, same seeds: the same hospitals and initial weights, other noise).

Record: scratch_public_warm_start.jsonl. Usage (repository root):
    python results/recipe_search/scratch_public_warm_start.py SEED [SEED ...]
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import hfgan_core.train as T
from hfgan_core.benchmark import provenance
from hfgan_core.data import load_dataset
from hfgan_core.extractor import load_or_train_extractor
from hfgan_core.quality import generator_quality

sys.path.insert(0, "benchmarks")
from recipe_search import RECIPES  # noqa: E402

torch.set_num_threads(1)
SMOKE = os.environ.get("SMOKE") == "1"  # a few rounds of everything, written under /tmp: checks the script runs
ROUNDS = 3 if SMOKE else 1000  # the public run: half the epsilon = inf recipe's 2,000 rounds (D's features)
RUNS = Path("/tmp/scratch_public_warm_start" + ("_smoke" if SMOKE else ""))
OUT = RUNS / "smoke.jsonl" if SMOKE else Path("results/recipe_search/scratch_public_warm_start.jsonl")


def public_checkpoint() -> dict:
    run_dir = RUNS / f"public-pneumoniamnist-ms-r{ROUNDS}"
    if not (run_dir / "generators.pt").exists():
        cfg = T.TrainConfig(**(RECIPES["ms"] | dict(dataset="pneumoniamnist", epsilon=math.inf, seed=0, clients=5,
                                                     rounds=ROUNDS, simulation_noise=True)))
        started = time.time()
        T.train(cfg, run_dir, progress=False)
        print(f"public run: {ROUNDS} rounds in {(time.time() - started) / 60:.1f} min", flush=True)
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


def load_matching(model: torch.nn.Module, state: dict) -> list[str]:
    """Copy the tensors whose names and shapes agree; return the names left at their fresh values."""
    own = model.state_dict()
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    return sorted(set(own) - set(taken))


def main() -> None:
    seeds = [int(s) for s in sys.argv[1:]] or [0]
    public = public_checkpoint()
    g_state = public["hospitals"][0]["generator"]  # one public generator starts every hospital's G_i
    real_setup = T.setup

    def warm_setup(config, dataset=None):
        run = real_setup(config, dataset)
        fresh_d = load_matching(run.discriminator, public["discriminator"])
        fresh_g = [load_matching(m, g_state) for h in run.clients for m in (h.generator, h.ema) if m is not None]
        print(f"warm start: D fresh {fresh_d}; G fresh {fresh_g[0]}", flush=True)
        return run

    T.setup = warm_setup
    ds = load_dataset("brainmri")
    dev = replace(ds, test=None)  # nothing below reads the test split
    extractor, _ = load_or_train_extractor(dev, epochs=5)
    for seed in seeds:
        config = T.TrainConfig(**(RECIPES["d5-ms-m9"] | dict(dataset="brainmri", epsilon=10.0, seed=seed, clients=5,
                                                              partition="dirichlet", alpha=0.5, delta=1e-5,
                                                              simulation_noise=True)
                                  | (dict(rounds=3) if SMOKE else {})))
        started = time.time()
        run = T.train(config, RUNS / f"warm-brainmri-eps10-seed{seed}", progress=False, dataset=ds)
        train_s = time.time() - started
        v = generator_quality([c.sampler for c in run.clients], dev, extractor)
        eps = max(c.budget.epsilon for c in run.clients)
        line = {"recipe": "d5-ms-m9 + public warm start", "public": f"pneumoniamnist ms {ROUNDS} rounds seed 0",
                "dataset": "brainmri", "epsilon": 10.0, "seed": seed, "config": asdict(config), "val": v,
                "max_epsilon": eps, "train_s": train_s, "wall_time_s": time.time() - started,
                **{k: provenance("cpu")[k] for k in ("hardware", "git_sha")}}
        with OUT.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"seed {seed}: TSTR AUC {v['tstr']['auc']:.3f} macro-F1 {v['tstr']['macro_f1']:.3f} CAS {v['cas']:.3f} "
              f"coverage {[round(c, 2) for c in v['coverage']]} max eps {eps:.2f} ({train_s / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
