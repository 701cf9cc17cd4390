"""The federated classifier: FedAvg (or FedProx) of a small CNN over the hospitals.

One loop serves every method of the benchmark; they differ only in what each hospital
trains on and how:

* ``synthetic``: images from generators, added to a hospital's real data (HF-GAN), or the
  only data (synthetic-only);
* ``augment``: classical torchvision v2 augmentation of every local batch;
* ``mu > 0``: FedProx's proximal term (mu / 2) ||w - w_global||^2 in each local objective;
* ``epoch_scale``: more (or fewer) local steps per round than one pass over the data: the control
  that gives plain FedAvg as many steps as a hospital that adds synthetic images;
* ``logit_adjust``: train on logits + log(local class prior) (Menon et al. 2021), so the model's
  own logits are balanced across classes: the control for the class balance synthetic labels add;
* ``dp``: each hospital trains with DP-SGD through Opacus (Poisson batches, per-example
  clipping, Gaussian noise), sigma calibrated for the steps it will take, accounted like
  the GAN (one record of one hospital; see ``privacy``).

The server averages the returned weights by real dataset size N_i. The round kept is the
one with the best *validation* macro-AUC, and with ``patience`` training stops once that has not
improved for so many rounds (``rounds`` is then a cap): validation data only, never test.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import server as sv
from .classifier import SmallCNN, predict_proba
from .metrics import classification_metrics
from .privacy import calibrate_noise, check_delta, compute_epsilon, config_key, float_key, noise_seed

Arrays = tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W) in [-1, 1], labels (N,)


@dataclass
class FedConfig:
    rounds: int = 10  # the cap when patience is set
    patience: int | None = None  # stop after this many rounds without a better validation AUC (None: all rounds)
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3  # Adam at each hospital
    keep_optimizer: bool = False  # True: a hospital keeps its Adam moments from one round to the next (they
    #                                never leave it); False: fresh Adam every round, as in plain FedAvg
    client_fraction: float = 1.0
    mu: float = 0.0  # FedProx proximal weight; 0 = FedAvg
    width: int = 32
    augment: bool = False
    augment_strength: float = 1.0  # scales every augmentation range (1: ±10°, ±5 % shifts, 85-100 % crops, ±15 % contrast)
    epoch_scale: float = 1.0  # local steps per round = local_epochs x ceil(epoch_scale x N_i / B)
    logit_adjust: bool = False  # class-balanced training by logit adjustment with the hospital's own prior
    seed: int = 0
    device: str = "cpu"  # where the model and every hospital's data live during training


@dataclass
class DPSpec:
    """DP-SGD on each hospital: target (epsilon, delta) per record, clipping norm C."""
    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    simulation_noise: bool = False  # True: masks and noise derived from the seed (research); False: OS entropy
    clip_only: bool = False  # sigma = 0: Poisson batches and per-example clipping, no noise (a control; epsilon inf)
    data_id: str = ""  # which data (e.g. "pneumoniamnist: 4708 training images"): in the simulation noise key, so
    #                    runs on other data never share a draw (f(D) + sigma z and g(D') + sigma z give f(D) - g(D'))


def augmentation(image_size: int, strength: float = 1.0):
    """Flips, small rotations and shifts, crops and intensity jitter (torchvision v2), drawn
    independently for every image; ``strength`` scales every range (the tuned knob)."""
    from torchvision.transforms import v2
    s = strength
    one = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10 * s, translate=(0.05 * s, 0.05 * s)),
                      v2.RandomResizedCrop(image_size, scale=(max(0.1, 1 - 0.15 * s), 1.0),
                                           ratio=(1 - 0.1 * s, 1 + 0.1 * s), antialias=True)])

    def apply(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [-1, 1]
        x = torch.stack([one(img) for img in x])
        scale = torch.empty(len(x), 1, 1, 1).uniform_(1 - 0.15 * s, 1 + 0.15 * s).to(x.device)  # contrast
        shift = torch.empty(len(x), 1, 1, 1).uniform_(-0.1 * s, 0.1 * s).to(x.device)  # brightness
        return (x * scale + shift).clamp(-1, 1)
    return apply


@dataclass
class FedResult:
    model: SmallCNN
    best_round: int
    val_history: list[dict]
    epsilons: list[float] | None  # per hospital, for DP training: spent over the rounds actually run
    noise_multipliers: list[float] | None
    rounds_run: int = 0
    steps: list[int] | None = None  # optimizer steps each hospital took


def train_federated(clients: list[Arrays], val: Arrays, *, num_classes: int, config: FedConfig,
                    synthetic: list[Arrays | None] | None = None, dp: DPSpec | None = None,
                    progress=None) -> FedResult:
    """FedAvg/FedProx over ``clients``; ``synthetic[i]`` (if given) joins hospital i's data.
    A hospital with no real data (synthetic only) is weighted by its synthetic count."""
    if dp and (synthetic or config.mu > 0 or config.augment or any(len(c[1]) == 0 for c in clients)):
        raise ValueError("DP-SGD here runs on each hospital's real records only (the accountant's q = B / N_i): "
                         "do not combine dp with synthetic data, FedProx, augmentation or empty hospitals")
    torch.manual_seed(config.seed)
    channels, size = val[0].shape[1], val[0].shape[-1]
    device = torch.device(config.device)
    model = SmallCNN(channels=channels, num_classes=num_classes, width=config.width).to(device)
    data = [tuple(t.to(device) for t in _local_data(real, synthetic[i] if synthetic else None))  # moved once
            for i, real in enumerate(clients)]
    weights = [len(real[1]) or len(d[1]) for real, d in zip(clients, data)]
    schedule = sv.selection_schedule(config.seed, len(clients), config.rounds, fraction=config.client_fraction)
    sigmas = _calibrate(clients, schedule, config, dp) if dp else None
    augment = augmentation(size, config.augment_strength) if config.augment else None
    best, best_state, best_round, history = -math.inf, None, 0, []
    steps = [0] * len(clients)
    moments: list[dict | None] = [None] * len(clients)  # each hospital's own Adam state (keep_optimizer)
    for r, chosen in enumerate(schedule):
        states = []
        for i in chosen:
            local = copy.deepcopy(model)
            if dp:
                moment = _train_private(local, data[i], config, dp, sigmas[i], moments[i], seed=_seed(config, r, i))
            else:
                moment = _train_local(local, model, data[i], config, augment, moments[i], seed=_seed(config, r, i))
            moments[i] = moment if config.keep_optimizer else None
            states.append(local.state_dict())
            steps[i] += _local_steps(config, clients[i]) if dp else _epoch_steps(config, data[i])
        model.load_state_dict(_average(states, [weights[i] for i in chosen]))
        scores = classification_metrics(val[1].numpy(), predict_proba(model, val[0]))
        history.append(scores)
        if scores["auc"] > best or best_state is None:
            best, best_state, best_round = scores["auc"], copy.deepcopy(model.state_dict()), r + 1
        if progress:
            progress(r + 1, scores)
        if config.patience and r + 1 - best_round >= config.patience:
            break
    model.load_state_dict(best_state)
    epsilons = None
    if dp:
        epsilons = [compute_epsilon(noise_multiplier=s, sample_rate=_rate(config, c), steps=k, delta=dp.delta,
                                    accountant=dp.accountant) if k and s > 0 else (math.inf if k else 0.0)
                    for s, c, k in zip(sigmas, clients, steps)]
    return FedResult(model, best_round, history, epsilons, sigmas, rounds_run=len(history), steps=steps)


def _seed(config: FedConfig, round_: int, client: int) -> int:
    return int(np.random.default_rng([config.seed, 7, round_, client]).integers(2**31))


def _local_data(real: Arrays, synthetic: Arrays | None) -> Arrays:
    if synthetic is None:
        return real
    return torch.cat([real[0], synthetic[0]]), torch.cat([real[1], synthetic[1]])


def _epoch_steps(config: FedConfig, data: Arrays) -> int:
    """Optimizer steps of one round of plain local training: local_epochs passes in batches of B."""
    return config.local_epochs * math.ceil(config.epoch_scale * len(data[1]) / config.batch_size)


def _average(states: list[dict], weights: list[int]) -> dict:
    w = sv.aggregation_weights(weights)
    return {k: sum(wi * s[k].float() for wi, s in zip(w, states)).to(states[0][k].dtype) for k in states[0]}


def _adam(params, config: FedConfig, moments: dict | None) -> torch.optim.Adam:
    """The hospital's Adam, starting from its own moments of the last round when it kept them."""
    opt = torch.optim.Adam(params, lr=config.lr)
    if moments is not None:
        opt.load_state_dict(moments)
    return opt


def _train_local(model: nn.Module, global_model: nn.Module, data: Arrays, config: FedConfig, augment,
                 moments: dict | None = None, *, seed: int) -> dict:
    """Local epochs of plain (or FedProx, augmented, logit-adjusted) training; returns Adam's state."""
    x, y = data
    opt = _adam(model.parameters(), config, moments)
    anchor = [p.detach().clone() for p in global_model.parameters()] if config.mu > 0 else None
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # augmentation draws
    steps = _epoch_steps(config, data)
    passes = math.ceil(steps * config.batch_size / max(len(y), 1))  # whole shuffles, as many as the steps need
    order = torch.cat([torch.randperm(len(y), generator=gen) for _ in range(passes)]) if len(y) else torch.zeros(0)
    prior = None
    if config.logit_adjust:  # log of this hospital's own class frequencies (it holds the labels anyway)
        counts = torch.bincount(y, minlength=model.head.out_features).float()
        prior = torch.log(counts.clamp_min(1) / counts.sum())  # (K,); an absent class counts as one
    model.train()
    for idx in order.long().split(config.batch_size)[:steps]:
        idx = idx.to(x.device)
        xb = augment(x[idx]) if augment else x[idx]
        logits = model(xb)
        loss = F.cross_entropy(logits + prior if prior is not None else logits, y[idx])
        if anchor is not None:  # FedProx: stay near the round's global weights
            loss = loss + config.mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt.state_dict()


# ---------------------------------------------------------------------------------------------
# DP-SGD on each hospital (Opacus)

def _rate(config: FedConfig, real: Arrays) -> float:
    return min(1.0, config.batch_size / len(real[1]))


def _local_steps(config: FedConfig, real: Arrays) -> int:
    """DP-SGD steps in one round at a hospital: 1/q Poisson batches per local epoch."""
    return config.local_epochs * round(1 / _rate(config, real))


def _planned_steps(clients: list[Arrays], schedule: list[list[int]], config: FedConfig) -> list[int]:
    """Local DP-SGD steps per hospital over the rounds that pick it."""
    rounds = sv.times_selected(schedule, len(clients))
    return [int(k) * _local_steps(config, c) for k, c in zip(rounds, clients)]


def _calibrate(clients: list[Arrays], schedule, config: FedConfig, dp: DPSpec) -> list[float]:
    if dp.clip_only:
        return [0.0] * len(clients)
    for i, c in enumerate(clients):
        check_delta(dp.delta, len(c[1]), f"hospital {i}")
    return [calibrate_noise(target_epsilon=dp.epsilon, delta=dp.delta, sample_rate=_rate(config, c),
                            steps=max(k, 1), accountant=dp.accountant)
            for c, k in zip(clients, _planned_steps(clients, schedule, config))]


def _train_private(model: nn.Module, data: Arrays, config: FedConfig, dp: DPSpec, sigma: float,
                   moments: dict | None = None, *, seed: int) -> dict:
    """Opacus DP-SGD for ``local_epochs`` x 1/q Poisson batches; weights are updated in place and
    Adam's state is returned (moments of noisy gradients: post-processing, no extra privacy cost)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    x, y = data
    q = _rate(config, data)
    # Poisson masks and Opacus's noise, on the data's device, from a stream nobody can regenerate (by default)
    gen = torch.Generator(device=x.device).manual_seed(noise_seed(dp.simulation_noise, seed, float_key(dp.epsilon),
                                                                  config_key(config, dp)))
    private = GradSampleModule(model)
    adam = _adam(private.parameters(), config, moments)
    opt = DPOptimizer(adam, noise_multiplier=sigma,
                      max_grad_norm=dp.max_grad_norm, expected_batch_size=max(1, round(q * len(y))), generator=gen)
    private.train()
    for _ in range(_local_steps(config, data)):
        mask = torch.rand(len(y), generator=gen, device=y.device) < q  # Poisson sampling, as the accountant assumes
        if not mask.any():  # an empty batch still costs a step: noise only
            opt.zero_grad(set_to_none=True)
            for p in private.parameters():
                p.grad_sample = torch.zeros(0, *p.shape, device=p.device)
        else:
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # Opacus's hooks on the first layer, whose input needs no grad
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                F.cross_entropy(private(x[mask]), y[mask]).backward()
        opt.step()
    private._close()
    return adam.state_dict()
