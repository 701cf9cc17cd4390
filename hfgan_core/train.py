"""The HF-GAN training loop: set-up, rounds, logging, checkpoints, resume.

Each round:
  (1) the server sends D to the selected hospitals; each returns a DP gradient of L_D
      (``client.discriminator_upload``), the server averages them by N_i and takes an
      Adam step -- ``d_steps`` times;
  (2) each selected hospital takes ``g_steps`` generator steps against the new D.
``train_round`` below is that loop, hospital by hospital: the reference. ``engine.train_round``
computes the same round for all hospitals at once and is the default (``--engine batched``).
"""
from __future__ import annotations

import copy
import json
import math
import pickle
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import client as cl
from . import engine
from . import server as sv
from .clipping import PerExampleClipper
from .data import MedicalDataset, load_dataset
from .device import require_device
from .errors import UserError, require_writable_folder
from .models import Generator, build_models
from .partition import class_counts, partition
from .privacy import (SIMULATION_NOTE, ClientBudget, calibrate_noise, check_delta, config_key, epsilon_replace_one,
                      float_key, max_steps_within, noise_seed, noisy_label_histogram, privacy_curve,
                      require_reachable)
from .synthesis import save_synthetic


DEBUG_COUNTS = "NOT_PRIVATE_exact_class_counts.json"  # written only with debug_exact_counts

# The recipe: one rule for every dataset, chosen on validation data (README, "Choosing the recipe").
# With DP each D step costs privacy and D's gradient is mostly noise (the noise's norm is ~25x the
# clipped signal's): D takes 5 steps per G step, 2,000 in all per hospital, and averages its noisy
# gradients with Adam momentum 0.9. Without DP the steps are free: one D step per G step, 2,000 rounds.
RECIPE = {"dp": dict(rounds=400, d_steps=5, beta1_d=0.9),
          "no_dp": dict(rounds=2000, d_steps=1, beta1_d=0.5)}


@dataclass
class TrainConfig:
    dataset: str = "pneumoniamnist"
    data_dir: str | None = None
    clients: int = 5
    partition: str = "dirichlet"
    alpha: float = 0.5
    min_client_size: int = 64
    client_fraction: float = 1.0
    rounds: int | None = None  # federated rounds (None: the recipe's, by whether epsilon is finite)
    d_steps: int | None = None  # D updates per round, each a DP step for every selected client (None: recipe)
    g_steps: int = 1  # generator steps per selected client per round
    batch_size: int = 64  # expected real examples per client batch (and fakes per G step)
    fakes: int | None = None  # fakes per hospital per D step (None: batch_size); they cost no privacy
    max_grad_norm: float = 1.0
    clip_per_layer: bool = False  # each D layer's part of a gradient to C / sqrt(layers) (same bound, same noise)
    epsilon: float = 10.0  # per-record, per-hospital target; inf trains without DP
    delta: float = 1e-5
    accountant: str = "prv"
    noise_multiplier: float | None = None  # fixed sigma instead of calibration; training stops at epsilon
    # (0 with epsilon inf: clipping only, no noise -- the control that separates clipping from noise)
    lr_d: float = 1e-3  # DCGAN's 2e-4 learns too little from noisy gradients (README, session 1)
    lr_g: float = 1e-3
    beta1: float = 0.5
    beta1_d: float | None = None  # Adam beta1 of D (None: recipe); more momentum averages DP noise over steps
    beta2: float = 0.999
    nz: int = 64
    ngf: int = 32
    ndf: int = 32
    aux_weight: float = 1.0  # > 0 adds an AC-GAN class head to D with this loss weight (0 = plain projection D)
    g_aux_weight: float | None = None  # the class term's weight in G's loss (None: aux_weight)
    loss: str = "ns"  # ns (non-saturating) or hinge
    mode_seeking: float = 1.0  # weight of G's mode-seeking term (Mao et al. 2019; no privacy cost)
    smoothness: float = 0.0  # weight of a total-variation penalty on G's images (no privacy cost)
    diffaugment: bool = False  # D sees shifted, cut-out images, real and fake (no privacy cost; the recipe: off)
    upsample: str = "deconv"  # generator upsampling: deconv (DCGAN) or nearest (+ 3x3 conv)
    g_ema: float = 0.99  # > 0 keeps an EMA of each G_i's weights (this decay) and samples from it
    fake_labels: str = "uniform"  # labels of D's fakes: uniform, or histogram (a DP label histogram per client)
    histogram_sigma: float = 10.0  # noise multiplier of that histogram release (counted in epsilon)
    seed: int = 0  # models, partition, selection; DP noise only with simulation_noise
    simulation_noise: bool = False  # True: noise streams derived from seed (research); False: OS entropy
    debug_exact_counts: bool = False  # also write the exact class counts, to a file marked NOT PRIVATE
    device: str = "cpu"
    checkpoint_every: int = 25
    synthetic_per_class: int = 1000  # images per class in the released synthetic.npz (0: none)
    engine: str = "batched"  # batched (all hospitals in one call) or loop (the per-hospital reference)
    download: bool = False

    def __post_init__(self) -> None:
        """Settings left at None take the recipe's value for this epsilon."""
        for name, value in RECIPE["dp" if self.private else "no_dp"].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def private(self) -> bool:
        return not math.isinf(self.epsilon)

    @property
    def clipped(self) -> bool:
        """Per-example clipping is on: with DP, or in the clipping-only control (sigma = 0)."""
        return self.private or self.noise_multiplier == 0

    @property
    def n_fakes(self) -> int:
        return self.batch_size if self.fakes is None else self.fakes

    @property
    def objective(self) -> cl.Objective:
        return cl.Objective(loss=self.loss, aux_weight=self.aux_weight, mode_seeking=self.mode_seeking,
                            smoothness=self.smoothness, diffaugment=self.diffaugment,
                            g_aux_weight=self.aux_weight if self.g_aux_weight is None else self.g_aux_weight)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Run:
    """Everything a training run holds; checkpoints save all of it."""
    config: TrainConfig
    dataset: MedicalDataset
    parts: list[np.ndarray]
    clients: list[cl.Client]
    discriminator: torch.nn.Module
    d_optimizer: torch.optim.Optimizer
    clipper: PerExampleClipper | None
    schedule: list[list[int]]
    round: int = 0
    train_seconds: float = 0.0  # wall time of all rounds so far (over resumes)
    audit: object | None = None  # attacks.CanaryAudit when the run is being audited (batched engine)

    @property
    def objective(self) -> cl.Objective:
        return self.config.objective


def setup(config: TrainConfig, dataset: MedicalDataset | None = None) -> Run:
    """Load data, split hospitals, build models, calibrate each hospital's noise."""
    check_config(config)
    ds = dataset or load_dataset(config.dataset, config.data_dir, download=config.download)
    parts = hospital_parts(config, ds.train.labels)
    x_all, y_all = ds.train.tensors()
    schedule = selection(config)
    planned = _planned_steps(config, schedule)
    shape = dict(num_classes=ds.num_classes, channels=ds.channels, image_size=ds.image_size)
    discriminator = build_discriminator(config, **shape)
    clients = [make_hospital(config, cid, x_all[idx], y_all[idx], num_classes=ds.num_classes,
                             planned_steps=int(planned[cid])) for cid, idx in enumerate(parts)]
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=(config.beta1_d, config.beta2))
    return Run(config, ds, parts, clients, discriminator, d_opt, make_clipper(config, discriminator, **shape), schedule)


def hospital_parts(config: TrainConfig, labels: np.ndarray) -> list[np.ndarray]:
    """Each hospital's indices into the training split: the same split in every runtime."""
    return partition(labels, config.clients, scheme=config.partition, alpha=config.alpha,
                     min_size=config.min_client_size, seed=config.seed)


def preflight(configs: list[TrainConfig], labels: np.ndarray) -> None:
    """For commands that run trainings later (benchmark, attacks, quality, Flower): refuse, before they
    write or wipe anything, what ``setup`` would refuse when a run's turn comes: its settings, a hospital
    smaller than a batch and, for a private run, a --delta not below 1/N_i and an --epsilon no sigma
    reaches (one accountant call, for the smallest hospital at the most D steps any hospital takes:
    exact when every hospital takes part in every round, a shade strict otherwise). A fixed
    --noise-multiplier's own refusal (``_budget``) is left to ``setup``."""
    for config in configs:
        check_config(config)
        sizes = [len(p) for p in hospital_parts(config, labels)]
        for cid, n in enumerate(sizes):
            _check_size(config, cid, n)
            if config.private:
                check_delta(config.delta, n, "a hospital")
        if config.private and config.noise_multiplier is None:
            steps = int(_planned_steps(config, selection(config)).max())
            require_reachable(target_epsilon=config.epsilon, delta=config.delta, accountant=config.accountant,
                              sample_rate=cl.sample_rate(config.batch_size, min(sizes)), steps=max(steps, 1),
                              histogram_sigma=_histogram_sigma(config))


def _planned_steps(config: TrainConfig, schedule: list[list[int]]) -> np.ndarray:
    """Each hospital's D steps over the run (the rounds that select it x d_steps): its sigma is calibrated for these."""
    return sv.times_selected(schedule, config.clients) * config.d_steps


def _check_size(config: TrainConfig, cid: int, n: int) -> None:
    if n < config.batch_size:
        raise UserError(f"client {cid} holds {n} images, fewer than --batch-size {config.batch_size}; "
                        "lower the batch size, use fewer clients or raise --min-client-size")


def selection(config: TrainConfig) -> list[list[int]]:
    """Every round's selected hospitals (``server.selection_schedule`` for this run)."""
    return sv.selection_schedule(config.seed, config.clients, config.rounds, fraction=config.client_fraction)


def build_discriminator(config: TrainConfig, *, num_classes: int, channels: int, image_size: int) -> torch.nn.Module:
    """D as every runtime builds it: from the run's seed, on the run's device."""
    torch.manual_seed(config.seed)
    _, d = build_models(num_classes=num_classes, channels=channels, image_size=image_size, nz=config.nz, ngf=config.ngf,
                        ndf=config.ndf, aux_classifier=config.aux_weight > 0)
    return d.to(config.device)


def make_clipper(config: TrainConfig, d: torch.nn.Module, *, num_classes: int, channels: int,
                 image_size: int) -> PerExampleClipper | None:
    """Per-example clipping on D (None when the run neither clips nor noises), after checking on
    three random inputs that D treats the examples of a batch independently."""
    if not config.clipped:
        return None
    gen = torch.Generator().manual_seed(0)
    probe = (torch.randn(3, channels, image_size, image_size, generator=gen).to(config.device),
             (torch.arange(3) % num_classes).to(config.device))
    return PerExampleClipper(d, max_grad_norm=config.max_grad_norm, probe=probe, per_layer=config.clip_per_layer)


def make_hospital(config: TrainConfig, cid: int, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                  planned_steps: int, budget: ClientBudget | None = None) -> cl.Client:
    """Hospital ``cid`` as it sets itself up on its own machine: its images on the run's device,
    G_i initialised from its own seed, G_i's optimiser and EMA, its accountant (sigma calibrated
    for its planned steps, unless ``budget`` restores one), its released label mix, its random
    stream. The in-process run and a Flower ``ClientApp`` both build hospitals here."""
    _check_size(config, cid, len(labels))
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(noise_seed(True, config.seed, 9, cid))  # the same G_i wherever the hospital runs
        gen = Generator(num_classes=num_classes, channels=images.shape[1], image_size=images.shape[-1],
                        nz=config.nz, ngf=config.ngf, upsample=config.upsample).to(device)
    if budget is None and config.private:
        budget = _budget(config, len(labels), planned_steps)
    probs = None
    if config.fake_labels == "histogram":
        sigma_h = config.histogram_sigma if config.private else None
        rng = np.random.default_rng(noise_seed(config.simulation_noise, config.seed, 2, cid, float_key(config.epsilon),
                                               config_key(config)))
        probs = torch.as_tensor(noisy_label_histogram(labels.cpu().numpy(), num_classes, sigma_h, rng),
                                dtype=torch.float32)
    return cl.Client(cid, images.to(device), labels.to(device), gen,
                     torch.optim.Adam(gen.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2)), budget,
                     copy.deepcopy(gen) if config.g_ema > 0 else None, config.g_ema, probs,
                     hospital_rng(config, cid, device))


def hospital_state(h: cl.Client) -> dict:
    """What a hospital must keep between rounds (checkpoints; a Flower ClientApp's context)."""
    return {"generator": h.generator.state_dict(), "ema": h.ema.state_dict() if h.ema is not None else None,
            "g_optimizer": h.g_optimizer.state_dict(), "steps": h.budget.steps if h.budget else 0,
            "epsilon": h.budget.epsilon if h.budget else 0.0, "rng": h.rng.get_state(),
            "noise_multiplier": h.budget.noise_multiplier if h.budget else None,
            "label_mix": h.fake_label_probs}


def load_hospital_state(h: cl.Client, state: dict) -> None:
    """Restore what ``hospital_state`` kept. The DP label mix is released once per run and counted
    once: a rebuilt hospital (resume, a new Flower process) keeps the one it drew, never a new draw."""
    if h.fake_label_probs is not None:
        if state.get("label_mix") is None:
            raise UserError(f"hospital {h.cid}: its saved state has no released label mix (made before it was kept); "
                            "a new draw would be a second, uncounted release: start the run over")
        h.fake_label_probs = state["label_mix"]
    h.generator.load_state_dict(state["generator"])
    if h.ema is not None:
        h.ema.load_state_dict(state["ema"])
    h.g_optimizer.load_state_dict(state["g_optimizer"])
    if h.budget is not None:
        saved = state.get("noise_multiplier")
        if saved is None or not math.isclose(saved, h.budget.noise_multiplier, rel_tol=1e-9):
            raise UserError(f"hospital {h.cid}: its saved steps were taken at sigma {saved}, but this setup calibrates "
                            f"sigma {h.budget.noise_multiplier:.6g} (a checkpoint.pt of another run, other Opacus/SciPy "
                            "versions, or a checkpoint made before sigma was kept): resuming would account those steps "
                            "at the wrong sigma; resume with the versions that began the run, or start it over")
        h.budget.steps, h.budget.epsilon = state["steps"], state["epsilon"]
    h.rng.set_state(state["rng"])  # on any device: resume redraws nothing


def hospital_rng(c: TrainConfig, cid: int, device: torch.device) -> torch.Generator:
    """Hospital ``cid``'s own random stream (Poisson masks, fakes, DP noise) on the run's device:
    from OS entropy, or with ``simulation_noise`` from (seed, cid, epsilon, every other setting) so that
    runs at different epsilons or settings never share draws (``privacy.config_key``). Its state is saved in checkpoints (which hold the
    hospitals' private state anyway), so resume continues the stream on any device."""
    seed = noise_seed(c.simulation_noise, c.seed, 5, cid, float_key(c.epsilon), config_key(c))
    return torch.Generator(device=device).manual_seed(seed)


def check_config(c: TrainConfig) -> None:
    checks = [(c.rounds >= 1, f"--rounds must be at least 1 (got {c.rounds})"),
              (c.d_steps >= 1 and c.g_steps >= 0, "--d-steps must be >= 1 and --g-steps >= 0"),
              (c.batch_size >= 1, f"--batch-size must be at least 1 (got {c.batch_size})"),
              (c.fakes is None or c.fakes >= 1, f"--fakes must be at least 1 (got {c.fakes})"),
              (c.max_grad_norm > 0, f"--max-grad-norm must be positive (got {c.max_grad_norm})"),
              (c.epsilon > 0, f"--epsilon must be positive (got {c.epsilon}); use inf to train without DP"),
              (0 < c.delta < 1, f"--delta must lie in (0, 1) (got {c.delta})"),
              (c.noise_multiplier is None or (c.noise_multiplier > 0 if c.private else c.noise_multiplier == 0),
               f"--noise-multiplier {c.noise_multiplier} with --epsilon {c.epsilon}: a fixed sigma needs a finite "
               "--epsilon to stop at and must be positive; 0 (clipping only, no noise) needs --epsilon inf"),
              (c.lr_d > 0 and c.lr_g > 0, f"--lr-d and --lr-g must be positive (got {c.lr_d}, {c.lr_g})"),
              (all(0 <= b < 1 for b in (c.beta1, c.beta1_d, c.beta2)),
               f"--beta1, --beta1-d and --beta2 must lie in [0, 1) (got {c.beta1}, {c.beta1_d}, {c.beta2})"),
              (0 <= c.g_ema < 1, f"--g-ema must lie in [0, 1) (got {c.g_ema}; 0 turns the EMA off)"),
              (c.checkpoint_every >= 1, f"--checkpoint-every must be >= 1 (got {c.checkpoint_every})"),
              (c.fake_labels in ("uniform", "histogram"),
               f"--fake-labels must be uniform or histogram (got {c.fake_labels})"),
              (c.histogram_sigma > 0, f"--histogram-sigma must be positive (got {c.histogram_sigma})"),
              (c.engine in ("batched", "loop"), f"--engine must be batched or loop (got {c.engine})"),
              (c.loss in cl.LOSSES, f"--loss must be one of {', '.join(cl.LOSSES)} (got {c.loss})"),
              (c.mode_seeking >= 0, f"--mode-seeking must be >= 0 (got {c.mode_seeking})"),
              (c.smoothness >= 0, f"--smoothness must be >= 0 (got {c.smoothness})"),
              (min(c.nz, c.ngf, c.ndf) >= 1, f"--nz, --ngf and --ndf must be at least 1 (got {c.nz}, {c.ngf}, {c.ndf})"),
              (c.synthetic_per_class >= 0, f"--synthetic-per-class must be >= 0 (got {c.synthetic_per_class}; 0: none)")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    require_device(c.device)


def _budget(c: TrainConfig, n: int, planned_steps: int, *, restore: tuple[float, int] | None = None) -> ClientBudget:
    """Calibrate sigma for the planned steps (or take --noise-multiplier and find how many steps
    it allows); the budget's curve then reports epsilon every round with the same accountant.
    ``restore``: (sigma, steps allowed) found before, for an accountant rebuilt elsewhere."""
    check_delta(c.delta, n, "a hospital")
    q = cl.sample_rate(c.batch_size, n)
    hist = _histogram_sigma(c)
    steps = max(planned_steps, 1)
    sigma = restore[0] if restore else c.noise_multiplier or calibrate_noise(
        target_epsilon=c.epsilon, delta=c.delta, sample_rate=q, steps=steps, accountant=c.accountant,
        histogram_sigma=hist)
    curve = privacy_curve(noise_multiplier=sigma, sample_rate=q, max_steps=steps, delta=c.delta,
                          accountant=c.accountant, histogram_sigma=hist)
    max_steps = restore[1] if restore else max_steps_within(curve, c.epsilon)
    # a hospital that takes part but cannot afford one round: a run of 0 rounds and untrained generators released
    if c.noise_multiplier and not restore and planned_steps >= c.d_steps and max_steps < c.d_steps:
        raise UserError(f"--noise-multiplier {sigma} spends more than --epsilon {c.epsilon} within one round "
                        f"({c.d_steps} D step(s) at sample rate {q:.4f}); raise --noise-multiplier or --epsilon")
    return ClientBudget(n_examples=n, sample_rate=q, noise_multiplier=sigma, delta=c.delta, accountant=c.accountant,
                        histogram_sigma=hist, curve=curve, max_steps=max_steps)


def _histogram_sigma(c: TrainConfig) -> float | None:
    """The released label mix's noise multiplier, charged to the hospital's budget (None: no mix released)."""
    return c.histogram_sigma if c.fake_labels == "histogram" else None


def check_budgets(run: Run, selected: list[cl.Client]) -> None:
    """Refuse the round if any selected hospital's next D steps would exceed its epsilon."""
    c = run.config
    for client in selected:
        if client.budget is not None and not client.budget.can_spend(c.d_steps):
            raise BudgetExhausted(f"round {run.round + 1}: client {client.cid} would exceed epsilon={c.epsilon} "
                                  f"(delta={c.delta}); stopping with the budget intact")


def round_line(run: Run, chosen: list[int], d_loss_fake: float, g_losses: list[float]) -> dict:
    """The round's metrics.jsonl line (``metrics_line`` with every hospital's ledger)."""
    ledgers = {cl_.cid: (cl_.budget.steps, cl_.budget.update_epsilon()) for cl_ in run.clients
               if cl_.budget is not None}
    return metrics_line(run.round, chosen, d_loss_fake, g_losses, ledgers)


def metrics_line(round_: int, chosen: list[int], d_loss_fake: float, g_losses: list[float],
                 ledgers: dict[int, tuple[int, float]]) -> dict:
    """A round's metrics.jsonl line; ``ledgers``: each private hospital's (steps, epsilon). No
    timing: a round's wall time is an un-noised function of the realised (Poisson) batch sizes,
    so only the whole run's time is written (timing.json)."""
    line = {"round": round_, "selected": chosen, "d_loss_fake": d_loss_fake,
            "g_loss": float(np.mean(g_losses)) if g_losses else None,
            "steps": {str(cid): steps for cid, (steps, _) in sorted(ledgers.items())}}
    if ledgers:
        line["epsilon"] = {str(cid): eps for cid, (_, eps) in sorted(ledgers.items())}
    return line


def train_round(run: Run) -> dict:
    """One HF-GAN round, hospital by hospital (the reference engine); returns its metrics line."""
    c, chosen = run.config, run.schedule[run.round]
    selected = [run.clients[i] for i in chosen]
    check_budgets(run, selected)
    d_fake = []
    for _ in range(c.d_steps):  # (1) update D with DP gradients from the selected clients
        uploads = []
        for client in selected:
            grads, loss_fake = cl.discriminator_upload(client, run.discriminator, run.clipper,
                                                       batch_size=c.batch_size, max_grad_norm=c.max_grad_norm,
                                                       objective=run.objective, fakes=c.n_fakes)
            uploads.append(grads)
            d_fake.append(loss_fake)
            if client.budget is not None:
                client.budget.spend()
        sv.apply_gradient(run.discriminator, run.d_optimizer,
                          sv.aggregate(uploads, [cl_.n_examples for cl_ in selected]))
    g_losses = [cl.generator_step(client, run.discriminator, batch_size=c.batch_size,  # (2) update each G_i
                                  objective=run.objective)
                for client in selected for _ in range(c.g_steps)]
    run.round += 1
    return round_line(run, chosen, float(np.mean(d_fake)), g_losses)


class BudgetExhausted(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Outputs and checkpoints

def _save_checkpoint(run: Run, out: Path) -> None:
    state = {"round": run.round,
             "discriminator": run.discriminator.state_dict(), "d_optimizer": run.d_optimizer.state_dict(),
             "hospitals": [hospital_state(c) for c in run.clients],
             "train_seconds": run.train_seconds,
             "torch_rng": torch.get_rng_state()}
    tmp = out / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out / "checkpoint.pt")


def _load_checkpoint(run: Run, out: Path) -> None:
    try:
        state = torch.load(out / "checkpoint.pt", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"--resume: {out / 'checkpoint.pt'} is unreadable ({type(exc).__name__}: truncated or corrupt); "
                        f"start the run again with another --out") from None
    run.round, run.train_seconds = state["round"], state.get("train_seconds", 0.0)
    run.discriminator.load_state_dict(state["discriminator"])
    run.d_optimizer.load_state_dict(state["d_optimizer"])
    for c, hospital in zip(run.clients, state["hospitals"]):
        load_hospital_state(c, hospital)
    torch.set_rng_state(state["torch_rng"])


def write_privacy(run: Run, out: Path) -> dict:
    return write_privacy_report(run.config, run.round, {cl_.cid: hospital_privacy(cl_) for cl_ in run.clients}, out)


def hospital_privacy(h: cl.Client) -> dict:
    """What one hospital reports about its own privacy (its accountant's ledger, add/remove and
    replace-one epsilon, its released label mix): computed where its accountant lives."""
    b = h.budget
    entry = b.to_json() if b else {"n_examples": h.n_examples, "epsilon": math.inf}
    if h.fake_label_probs is not None and b is not None:  # without DP it is the exact class mix: not published
        entry["released_label_frequencies"] = h.fake_label_probs.tolist()
    if b is not None:
        entry["epsilon_replace_one"] = epsilon_replace_one(noise_multiplier=b.noise_multiplier,
                                                           sample_rate=b.sample_rate, steps=b.steps, delta=b.delta,
                                                           histogram_sigma=b.histogram_sigma)
    return entry


def write_privacy_report(c: TrainConfig, rounds: int, hospitals: dict[int, dict], out: Path) -> dict:
    """privacy.json from the hospitals' own entries (``hospital_privacy``)."""
    report = {"unit": "one training record (image + label) of one hospital",
              "mechanism": ("Poisson-subsampled Gaussian on per-example clipped D gradients, noised on the client"
                            if c.private else "per-example clipping only, no noise: no guarantee" if c.clipped
                            else "none: plain D gradients, no guarantee"),
              "accountant": c.accountant if c.private else None, "delta": c.delta if c.private else None,
              "target_epsilon": c.epsilon if c.private else None, "max_grad_norm": c.max_grad_norm,
              "rounds_completed": rounds,
              "noise_source": ("derived from the seed (simulation: assumes a trusted simulator)" if c.simulation_noise
                               else "OS entropy; its state is kept only in checkpoint.pt, the hospitals' private "
                                    "state beside every model, and in no released file"),
              "clients": {str(cid): entry for cid, entry in sorted(hospitals.items())}}
    if c.private:
        report["max_epsilon"] = max(v["epsilon"] for v in report["clients"].values())
        report["max_epsilon_replace_one"] = max(v["epsilon_replace_one"] for v in report["clients"].values())
        report["adjacency"] = ("epsilon: add or remove one record with N_i treated as public (the code uses the "
                               "exact N_i, so this is one record replaced by a null record, N_i fixed: "
                               "dp-accounting's REPLACE_SPECIAL, the same numbers), the accountant above; "
                               "epsilon_replace_one: one record replaced by another, dp-accounting PLD")
    (out / "privacy.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def release_note(run: Run, privacy: dict) -> dict:
    """What a released artefact (generators, synthetic images) carries: its privacy and its recipe."""
    c = run.config
    return {"dataset": run.dataset.name, "class_names": list(run.dataset.class_names),
            "epsilon": privacy.get("max_epsilon", math.inf) if c.private else math.inf,
            "epsilon_per_hospital": {k: v["epsilon"] for k, v in privacy["clients"].items()},
            "delta": c.delta if c.private else None, "unit": privacy["unit"] if c.private else None,
            "accountant": c.accountant if c.private else None,
            "noise_source": privacy.get("noise_source"),
            "note": ("trained without DP: these images carry no privacy guarantee" if not c.private else
                     "a research simulation, not a release: the DP noise was derived from the seed and settings in "
                     "'recipe', so anyone holding them can redraw it; the (epsilon, delta) above holds only "
                     "against an adversary who cannot (a trusted simulator)" if c.simulation_noise else
                     "post-processing of the DP generators: anything trained on these images alone is "
                     "(epsilon, delta)-DP per record of each hospital, for these settings; choosing the settings "
                     "(the recipe) on the same records is not charged"),
            "recipe": asdict(c), "seed": c.seed}


def save_generators(run: Run, out: Path) -> Path:
    """generators.pt: every hospital's released generator (EMA weights with standing BatchNorm
    statistics) and the settings to rebuild it; ``load_generators`` reads it back."""
    c, ds = run.config, run.dataset
    state = {"model": dict(num_classes=ds.num_classes, channels=ds.channels, image_size=ds.image_size, nz=c.nz,
                           ngf=c.ngf, upsample=c.upsample),
             "generators": [{k: v.cpu() for k, v in cl_.sampler.state_dict().items()} for cl_ in run.clients]}
    path = out / "generators.pt"
    torch.save(state, path.with_suffix(".pt.tmp"))
    path.with_suffix(".pt.tmp").replace(path)
    return path


def load_generators(path: str | Path, device: str = "cpu") -> list[Generator]:
    """The released generators of a run (``<run>/generators.pt``), in eval mode."""
    state = torch.load(path, map_location=device, weights_only=True)
    gens = []
    for sd in state["generators"]:
        g = Generator(**state["model"]).to(device)
        g.load_state_dict(sd)
        gens.append(g.eval())
    return gens


def save_sample_grids(run: Run, out: Path, per_class: int = 8) -> list[Path]:
    """One PNG per client: row r holds class r, from fixed noise."""
    return [save_grid(sample_grid(c.sampler, per_class), out / f"samples_client{c.cid}.png", per_class)
            for c in run.clients]


def sample_grid(sampler: Generator, per_class: int = 8) -> torch.Tensor:
    """(K * per_class, C, H, W) images of a released generator from fixed noise, row r = class r:
    synthetic images only, so a hospital may send them anywhere."""
    gen = torch.Generator().manual_seed(1234)
    device = next(sampler.parameters()).device
    z = torch.randn(sampler.num_classes * per_class, sampler.nz, generator=gen)
    y = torch.arange(sampler.num_classes).repeat_interleave(per_class)
    sampler.eval()
    with torch.no_grad():
        images = sampler(z.to(device), y.to(device)).cpu()
    sampler.train()
    return images


def save_grid(images: torch.Tensor, path: Path, per_class: int = 8) -> Path:
    from torchvision.utils import save_image
    save_image(images, path, nrow=per_class, normalize=True, value_range=(-1, 1))
    return path


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, stop_after: int | None = None,
          progress: bool = True, dataset: MedicalDataset | None = None) -> Run:
    """Run (or resume) HF-GAN training and write config.json, metrics.jsonl, privacy.json,
    sample grids and checkpoint.pt under ``out``."""
    out = Path(out)
    require_writable_folder(out)
    if resume:
        saved = saved_config(out)
        other = [f.name for f in fields(TrainConfig)
                 if f.name not in WHERE and getattr(config, f.name) != getattr(saved, f.name)]
        if other:
            raise UserError(f"--resume continues the run in {out} with its own settings, but this command asks for other "
                            + ", ".join(f"--{k.replace('_', '-')} ({getattr(config, k)}; saved: {getattr(saved, k)})"
                                        for k in other) + "; drop those flags, or start a new run with another --out")
    elif (out / "checkpoint.pt").exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    run = setup(config, dataset)
    if config.private and config.simulation_noise:
        print(f"note: {SIMULATION_NOTE}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if resume:
        _load_checkpoint(run, out)
        kept = [l for l in metrics_path.read_text().splitlines() if json.loads(l)["round"] <= run.round]
        metrics_path.write_text("".join(l + "\n" for l in kept))
    else:
        _write_config(run, out, echo=progress)
        metrics_path.write_text("")
    _train_loop(run, out, metrics_path, stop_after=stop_after, progress=progress)
    return run


WHERE = ("data_dir", "download")  # where the data comes from, not what the run is: a resumed run may find it elsewhere


def saved_config(out: str | Path) -> TrainConfig:
    """The settings of the run saved in ``out`` (what --resume continues), or one line saying what is missing."""
    out = Path(out)
    if not (out / "checkpoint.pt").exists():
        raise UserError(f"--resume: no checkpoint.pt in {out}; start without --resume")
    try:
        return TrainConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--resume: {out / 'config.json'} is missing or unreadable ({type(exc).__name__}), so the "
                        f"run in {out} cannot be continued; start it again with another --out") from None


def trained_generators(cfg: TrainConfig, run_dir: Path, ds: MedicalDataset | None = None, *, resume: bool,
                       progress: bool, stamp: dict | None = None) -> tuple[list[Generator], dict]:
    """The run in ``run_dir``: trained afresh, or with ``resume`` (and the very same config) continued
    from its checkpoint or, finished, reused. Returns its released generators and ``rounds``,
    ``max_epsilon``, ``train_s`` (wall time of the rounds, over resumes; runs from before
    timing.json get the time between their first and last file) and ``resumed`` (none, checkpoint
    or finished). ``stamp`` (the benchmark's code hash and data file hash) must match the one the run
    was made under too: an equal config made by other code or data is trained again, never reused."""
    saved = run_dir / "stamp.json"
    same = resume and (run_dir / "config.json").exists() and TrainConfig.from_dict(
        json.loads((run_dir / "config.json").read_text())["config"]) == cfg
    same = same and (stamp is None or (saved.exists() and json.loads(saved.read_text()) == stamp))
    if same and (run_dir / "generators.pt").exists():
        how = "finished"
    else:
        how = "checkpoint" if same and (run_dir / "checkpoint.pt").exists() else "none"
        if how == "none":
            shutil.rmtree(run_dir, ignore_errors=True)  # our own output from an earlier call
            if stamp is not None:
                run_dir.mkdir(parents=True)
                saved.write_text(json.dumps(stamp, indent=2))
        train(cfg, run_dir, resume=how == "checkpoint", progress=progress, dataset=ds)
    timing = run_dir / "timing.json"
    train_s = (json.loads(timing.read_text())["train_s"] if timing.exists() else
               (run_dir / "generators.pt").stat().st_mtime - (run_dir / "config.json").stat().st_mtime)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    gens = load_generators(run_dir / "generators.pt", cfg.device)
    spent = max(v["epsilon"] for v in privacy["clients"].values())
    return gens, {"max_epsilon": spent, "rounds": privacy["rounds_completed"],
                  "train_s": train_s, "resumed": how}


def _train_loop(run: Run, out: Path, metrics_path: Path, *, stop_after: int | None, progress: bool) -> None:
    c = run.config
    bar = tqdm(total=c.rounds, initial=run.round, disable=not progress, desc="HF-GAN rounds", unit="round")
    max_eps = max((cl_.budget.epsilon for cl_ in run.clients if cl_.budget), default=math.inf)
    try:
        with metrics_path.open("a") as log:
            step = engine.train_round if c.engine == "batched" else train_round
            while run.round < c.rounds:
                started = time.perf_counter()
                try:
                    line = step(run)
                except BudgetExhausted as exc:
                    tqdm.write(f"stopped: {exc}")
                    break
                run.train_seconds += time.perf_counter() - started
                if "epsilon" in line:
                    max_eps = max(line["epsilon"].values())
                log.write(json.dumps(line) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(d_fake=f"{line['d_loss_fake']:.3f}", g=f"{line['g_loss']:.3f}",
                                eps=f"{max_eps:.2f}")
                if run.round % c.checkpoint_every == 0 or run.round == c.rounds:
                    _save_checkpoint(run, out)
                if stop_after is not None and run.round >= stop_after:
                    _save_checkpoint(run, out)
                    break
    finally:
        bar.close()
    for cl_ in run.clients:
        if cl_.budget is not None:
            cl_.budget.update_epsilon()
        cl.standing_bn_stats(cl_.sampler, seed=c.seed)  # the released sampler, ready for eval mode
    privacy = write_privacy(run, out)
    (out / "timing.json").write_text(json.dumps({"rounds_completed": run.round, "train_s": run.train_seconds,
                                                 "device": c.device, "torch_threads": torch.get_num_threads()}))
    save_sample_grids(run, out)
    save_generators(run, out)
    if c.synthetic_per_class > 0:
        save_synthetic(out / "synthetic.npz", [cl_.sampler for cl_ in run.clients], per_class=c.synthetic_per_class,
                       num_classes=run.dataset.num_classes, seed=c.seed, meta=release_note(run, privacy))


def _write_config(run: Run, out: Path, *, echo: bool = True) -> None:
    """config.json: settings, dataset, hospital sizes (public under our threat model) and versions.
    Exact per-class counts have sensitivity 1 each, so they are printed and written only with
    ``debug_exact_counts``, to a file named as not private."""
    ds = run.dataset
    sizes = [len(p) for p in run.parts]
    info = {"config": asdict(run.config),
            "dataset": {"name": ds.name, "path": str(ds.path), "image_size": ds.image_size,
                        "channels": ds.channels, "class_names": list(ds.class_names)},
            "client_sizes": sizes,
            "versions": _versions()}
    (out / "config.json").write_text(json.dumps(info, indent=2))
    if run.config.debug_exact_counts:
        counts = class_counts(ds.train.labels, run.parts, ds.num_classes)
        (out / DEBUG_COUNTS).write_text(json.dumps({
            "warning": "NOT PRIVATE: exact per-class counts of every hospital (each has sensitivity 1). "
                       "For debugging on the data owner's machine; never publish this file.",
            "class_names": list(ds.class_names), "client_class_counts": counts.tolist()}, indent=2))
    if echo:
        released = [c.fake_label_probs for c in run.clients]
        tqdm.write("\n".join(f"hospital {i}: N = {n}" + (f", DP class mix {np.round(p.numpy(), 3).tolist()}"
                                                          if p is not None and run.config.private else "")
                             for i, (n, p) in enumerate(zip(sizes, released))))
        if run.config.debug_exact_counts:
            tqdm.write(f"NOT PRIVATE (--debug-exact-counts): exact class counts in {out / DEBUG_COUNTS}")


def _versions() -> dict[str, str]:
    import platform
    import opacus
    return {"python": platform.python_version(), "torch": torch.__version__, "opacus": opacus.__version__,
            "numpy": np.__version__, "machine": platform.machine(), "threads": str(torch.get_num_threads())}
