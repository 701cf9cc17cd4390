"""Federated DP-SGD on PneumoniaMNIST: the centralized recipe (``dp_sgd_centralized.py``), federated.

The second half of the DP-SGD question: how much of the centralized DP-SGD accuracy survives
when each of 5 hospitals (Dirichlet alpha = 0.5, the benchmark's split) runs DP-SGD on its own
records and the server averages the weights (FedAvg)? The guarantee changes unit: epsilon is
per record *of one hospital* (each hospital accounts its own steps, PRV accountant), so a small
hospital (a few hundred records, sampling rate up to 1) pays far more noise per step than the
pooled 4,708 records did.

It runs the benchmark's own DP classifier (``federated.train_federated`` with a ``DPSpec``: Opacus
per hospital, sigma calibrated for the steps each hospital will take) over a grid: rounds (steps)
and whether a hospital keeps its Adam moments between rounds (``FedConfig.keep_optimizer``), at
the centralized choice's learning rate and a batch that still gives every hospital several
steps a round. The round and the grid point are chosen on validation macro-AUC; the test split
is read once, for the chosen model.

Usage: python benchmarks/dp_sgd_federated.py [--epsilon 8] [--seed 0] [--jobs 2]
                                              [--out results/dp_sgd_federated.json]
(``--jobs``: grid points trained side by side, one process and one torch thread each)
"""
from __future__ import annotations

import argparse
import multiprocessing
import itertools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from hfgan_core.benchmark import jsonable, provenance
from hfgan_core.classifier import predict_proba
from hfgan_core.data import load_dataset
from hfgan_core.federated import DPSpec, FedConfig, train_federated
from hfgan_core.metrics import classification_metrics
from hfgan_core.train import TrainConfig, hospital_parts

GRID = {"batch_size": [256], "lr": [4e-3], "rounds": [240, 120, 60], "keep_optimizer": [False, True]}  # longest first


def _train(hospitals, val, num_classes: int, point: dict, dp: DPSpec, seed: int):
    """One grid point: the benchmark's DP-SGD FedAvg, the round kept by validation macro-AUC."""
    t0 = time.time()
    res = train_federated(hospitals, val, num_classes=num_classes, config=FedConfig(width=32, seed=seed, **point), dp=dp)
    kept = res.val_history[res.best_round - 1]
    return {"point": point, "val_auc": kept["auc"], "val_accuracy": kept["accuracy"], "best_round": res.best_round,
            "epsilon_per_hospital": res.epsilons, "noise_multiplier_per_hospital": res.noise_multipliers,
            "steps_per_hospital": res.steps, "val_auc_curve": [h["auc"] for h in res.val_history],
            "seconds": time.time() - t0}, res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="results/dp_sgd_federated.json")
    args = parser.parse_args()
    ds = load_dataset("pneumoniamnist", args.data_dir)
    split = TrainConfig(dataset="pneumoniamnist", clients=5, partition="dirichlet", alpha=0.5, seed=args.seed)
    x, y = ds.train.tensors()
    hospitals = [(x[idx], y[idx]) for idx in hospital_parts(split, ds.train.labels)]
    val = ds.val.tensors()
    dp = DPSpec(epsilon=args.epsilon, delta=args.delta, accountant="prv", simulation_noise=True)
    points = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    tried, best, started = [], None, time.time()
    torch.set_num_threads(1)  # as in every worker (provenance records it)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        runs = [pool.submit(_train, hospitals, val, ds.num_classes, point, dp, args.seed) for point in points]
        for future in runs:  # in grid order, whatever order they finish in
            entry, res = future.result()
            tried.append(entry)
            print(json.dumps(jsonable({k: v for k, v in entry.items() if k != "val_auc_curve"})), flush=True)
            if best is None or entry["val_auc"] > best[0]["val_auc"]:  # ties: the earlier point
                best = (entry, res)
    entry, res = best
    point = entry["point"]
    tx, ty = ds.test.tensors()  # read once, for the chosen model
    test = classification_metrics(ty.numpy(), predict_proba(res.model, tx))
    report = {"dataset": "pneumoniamnist", "epsilon_target": args.epsilon, "delta": args.delta,
              "unit": "one record of one hospital (add/remove), each hospital accounted on its own",
              "accountant": "PRV", "hospitals": [len(h[1]) for h in hospitals], "split": asdict(split),
              "grid": GRID, "tried": tried, "chosen": point, "chosen_round": res.best_round,
              "chosen_epsilon_per_hospital": res.epsilons,
              "test": {k: test[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc") if k in test},
              "centralized_reference": "results/dp_sgd_centralized.json",
              "wall_time_s": time.time() - started, "jobs": args.jobs, "provenance": provenance("cpu")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(jsonable(report), indent=2))
    print(f"chosen on validation: {point}; test accuracy {test['accuracy']:.3f}, AUC {test['auc']:.3f} "
          f"at epsilon per hospital <= {max(res.epsilons):.2f} (target {args.epsilon})")


if __name__ == "__main__":
    main()
