"""One tuning protocol for every classifier of the benchmark: the same budget, on validation.

Each method has a space of hyper-parameters (a grid, below). Every method tries the same number
of its points, the profile's ``tune``: first the profile's default point, then a seeded random
draw of the rest of its grid (random search over a grid, Bergstra & Bengio 2012), so a method
with a larger space gets no larger budget. The draw depends on the grid, not on the method's
name, so methods with one grid (the DP classifier and its clipping-only control) try the same
points. Each point trains the method's classifier on the first seed's hospitals (and GANs) and is
scored by its best *validation* macro-AUC (the criterion that also picks the round); the winner is
used for every seed. The trials use a classifier seed no reported row uses (``TRIAL_SEED``), and
the first seed's row is a fresh run at the winner: a winner's own run would carry the luck of its
initialisation that made it win, a bonus that grows with the number of points tried and that the
other seeds' rows do not get. The test split is never read here.

Methods that are another method plus one knob start from that method's choice (``INHERIT``) and
spend their budget on the knob: FedProx and augmentation take FedAvg's learning rate and local
epochs and tune μ or the augmentation strength, so they can always reach FedAvg's point (a random
draw over lr × epochs × knob could miss it). The equal-steps control takes HF-GAN's local epochs
(so each of its rounds takes as many optimizer steps as HF-GAN's) and tunes the learning rate.

Tuning the DP classifier on validation is itself not accounted for, as in most of the DP
literature: the fixed ``tune`` configurations each read the private records and the best one's run
is released, so the honest cost is composition over them (Papernot & Steinke's 2022 bounds need a
random number of trials). HF-GAN's recipe was chosen on validation the same way
(``benchmarks/recipe_search.py``).
"""
from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np

from ..errors import UserError
from ..federated import DPSpec, FedConfig, FedResult
from .config import PRIVATE_ROWS

BASE = {"lr": (3e-4, 1e-3, 3e-3, 1e-2), "local_epochs": (1, 2)}  # every method, unless it inherits
KNOB = {"fedprox": {"mu": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)},  # FedProx's proximal weight: decades
        "fedavg_aug": {"augment_strength": (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)},
        "fedavg_steps": {"lr": BASE["lr"]}}
# method -> (the method whose chosen point it starts from, the keys it takes from there)
INHERIT = {"fedprox": ("fedavg", ("lr", "local_epochs")), "fedavg_aug": ("fedavg", ("lr", "local_epochs")),
           "fedavg_steps": ("hfgan", ("local_epochs",))}
CRITERION = "best validation macro-AUC over the rounds (the round picked the same way)"
TRIAL_SEED = 10_000  # added to the classifier's seed in tuning trials: no reported row is a trial


def space(method: str, fed: FedConfig, dp: DPSpec | None = None) -> dict[str, tuple]:
    """The grid a method is tuned over. DP-SGD (with ``dp``): batch size up to (near) full batch for
    a hospital of ~1,000 records, clipping norm, learning rate (up to the 4e-3 that centralized
    DP-SGD chose, ``benchmarks/dp_sgd_centralized.py``), the round cap its noise is calibrated for,
    and whether a hospital keeps its Adam moments between rounds."""
    if dp is not None:
        return {"lr": (1e-3, 4e-3), "batch_size": (64, 256, 1024), "max_grad_norm": (0.1, 1.0),
                "rounds": tuple(sorted({fed.rounds, max(1, fed.rounds // 4)})), "keep_optimizer": (False, True)}
    return KNOB.get(method, BASE)


def candidates(method: str, fed: FedConfig, dp: DPSpec | None, *, k: int, seed: int) -> list[dict]:
    """``k`` points of the method's grid: the current (profile) point first, then a seeded draw."""
    grid = space(method, fed, dp)
    default = {key: _current(key, fed, dp) for key in grid}
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    rest = [p for p in points if p != default]
    order = np.random.default_rng([seed, 31, zlib.crc32(repr(sorted(grid.items())).encode())]).permutation(len(rest))
    return [default] + [rest[i] for i in order[:max(0, k - 1)]]


def apply(point: dict, fed: FedConfig, dp: DPSpec | None) -> tuple[FedConfig, DPSpec | None]:
    """A point's values, set on the classifier's config and (clipping norm) on its DP spec."""
    fed_keys = {f.name for f in fields(FedConfig)}
    fed = replace(fed, **{k: v for k, v in point.items() if k in fed_keys})
    if dp is not None and "max_grad_norm" in point:
        dp = replace(dp, max_grad_norm=point["max_grad_norm"])
    return fed, dp


def _current(key: str, fed: FedConfig, dp: DPSpec | None) -> float:
    if key == "max_grad_norm":
        return dp.max_grad_norm if dp is not None else DPSpec(epsilon=math.inf).max_grad_norm
    return getattr(fed, key)


def validation_score(results: list[FedResult]) -> float:
    """Mean over the row's models (5 for "local only") of the validation AUC at the round kept."""
    return float(np.mean([r.val_history[r.best_round - 1]["auc"] for r in results]))


Train = Callable[[FedConfig, "DPSpec | None"], list[FedResult]]


@dataclass
class Tuner:
    """Tunes each (method, epsilon) once, on the first seed that runs it, and remembers the winner
    for the other seeds; ``log`` (grid, every point tried with its score, the choice) goes to runs.json."""
    k: int  # configurations per method (the profile's ``tune``)
    log: dict = field(default_factory=dict)

    def fit(self, method: str, eps: float, seed: int, train: Train, fed: FedConfig,
            dp: DPSpec | None = None, *, parent_eps: float = math.inf) -> tuple[list[FedResult], dict]:
        """``parent_eps``: the epsilon of the private row an ``INHERIT`` method starts from (HF-GAN's
        headline epsilon; a non-private parent such as FedAvg is its epsilon-infinity row)."""
        key = f"{method}|{eps}"
        if key in self.log:  # the point tuned on the first seed, with what it inherited then
            point, inherited = self.log[key]["chosen"], self.log[key].get("inherited", {})
            now = self.inherit(method, fed, parent_eps)[1]
            if now != inherited:
                raise UserError(f"{method} was tuned from {INHERIT[method][0]}'s choice {inherited or '(none yet)'}, "
                                f"which is now {now}: its tuned point no longer starts where its parent's does; "
                                "run both in one benchmark (--methods all), in a fresh --out")
            return train(*apply(inherited | point, fed, dp)), inherited | point
        fed, inherited = self.inherit(method, fed, parent_eps)
        points = candidates(method, fed, dp, k=self.k, seed=seed)
        entry = {"space": {k: list(v) for k, v in space(method, fed, dp).items()}, "seed": seed,
                 "criterion": CRITERION, "inherited": inherited}
        if len(points) == 1:  # nothing to choose (the quick profile): the row itself is the only run
            results = train(*apply(points[0], fed, dp))
            self.log[key] = entry | {"budget": 1, "chosen": points[0],
                                     "tried": [{"point": points[0], "val_auc": validation_score(results)}]}
            return results, inherited | points[0]
        trial = replace(fed, seed=fed.seed + TRIAL_SEED)
        best, tried = None, []
        for point in points:
            score = validation_score(train(*apply(point, trial, dp)))
            tried.append({"point": point, "val_auc": score})
            if best is None or np.nan_to_num(score, nan=-np.inf) > best[0]:  # ties: the earlier point
                best = (np.nan_to_num(score, nan=-np.inf), point)
        self.log[key] = entry | {"budget": len(tried), "tried": tried, "chosen": best[1], "trial_seed": trial.seed}
        return train(*apply(best[1], fed, dp)), inherited | best[1]  # the row: a fresh run at the winner

    def inherit(self, method: str, fed: FedConfig, parent_eps: float) -> tuple[FedConfig, dict]:
        """``fed`` with the values an ``INHERIT`` method takes from its parent's chosen point (none when
        the parent was not run: then the profile's values stand, and the log says so)."""
        if method not in INHERIT:
            return fed, {}
        parent, keys = INHERIT[method]
        entry = self.log.get(f"{parent}|{parent_eps if parent in PRIVATE_ROWS else math.inf}")
        if entry is None:
            return fed, {}
        taken = {k: entry["chosen"][k] for k in keys}
        return replace(fed, **taken), taken
