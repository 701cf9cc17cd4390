"""What the benchmark runs: its methods, its profiles (smoke / quick / paper) and one run's settings."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..federated import FedConfig
from ..quality import QualityConfig


@dataclass(frozen=True)
class Method:
    label: str
    gan: str | None = None  # which GAN feeds it: "hfgan", "dpfedavg_gan" or None


METHODS: dict[str, Method] = {
    "local": Method("Local only (mean over hospitals)"),
    "fedavg": Method("FedAvg"),
    "fedprox": Method("FedProx"),
    "fedavg_aug": Method("FedAvg + classical augmentation"),
    # controls: what the synthetic rows add besides images (more steps, balanced labels, any extra pixels)
    "fedavg_steps": Method("FedAvg, as many steps per round as HF-GAN"),
    "fedavg_balanced": Method("FedAvg, class-balanced (logit adjustment)"),
    "fedavg_null": Method("FedAvg + null images (untrained generator)"),
    "hfgan": Method("HF-GAN (own synthetic images)", gan="hfgan"),
    "hfgan_shared": Method("HF-GAN, shared synthetic pool", gan="hfgan"),
    "hfgan_synth_only": Method("HF-GAN, synthetic only", gan="hfgan"),
    "dpfedavg_gan": Method("DP-FedAvg-GAN (+ its synthetic images)", gan="dpfedavg_gan"),
    "dp_fedavg": Method("DP classifier (DP-SGD FedAvg)"),
    "dp_fedavg_clip": Method("DP-SGD FedAvg, clipping only (σ = 0)"),  # what clipping costs, without noise
    "centralized": Method("Centralized (pooled, non-private)"),
}
GAN_LABELS = {"hfgan": "HF-GAN (each hospital's generator)", "dpfedavg_gan": "DP-FedAvg-GAN (the server's generator)"}
PRIVATE_ROWS = {"hfgan", "hfgan_shared", "hfgan_synth_only", "dpfedavg_gan", "dp_fedavg"}  # one row per epsilon
CURVE_METHODS = ("hfgan", "hfgan_synth_only", "dp_fedavg")  # the privacy-utility curve: HF-GAN against DP-SGD


@dataclass
class Profile:
    gan: dict  # TrainConfig overrides
    gan_epochs: float | None  # if set, HF-GAN rounds = epochs x median N_i / batch
    fed: FedConfig
    dpgan: dict  # DPFedAvgGANConfig overrides
    synthetic_ratio: float = 1.0  # synthetic images per real image a hospital adds
    gan_scale: float = 1.0  # HF-GAN rounds as a fraction of the recipe's (quick: a shorter preview GAN)
    extractor_epochs: int = 5
    prefer_64px: bool = False
    mu: float = 0.01  # FedProx
    max_train: int | None = None  # smoke only: a seeded, stratified subset of the training split
    curve_seeds: int | None = None  # how many of the seeds the extra curve epsilons run on (None: all)
    quality: QualityConfig = field(default_factory=QualityConfig)  # judging every GAN on validation
    accountant: str = "prv"  # every private method's; rdp only where speed beats tightness (smoke)
    seeds: int = 3  # how many seeds the notebooks run when not told (0, 1, ..., seeds - 1)
    tune: int = 1  # configurations every classifier tries on validation (``tuning``; 1: the default point only)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(gan=dict(rounds=3, batch_size=16, nz=16, ngf=8, ndf=8, synthetic_per_class=20), gan_epochs=None,
                     fed=FedConfig(rounds=2, batch_size=32, width=8), dpgan=dict(rounds=3, local_steps=1,
                     batch_size=16, nz=16, ngf=8, ndf=8), synthetic_ratio=0.2, extractor_epochs=1,
                     max_train=600, curve_seeds=1, accountant="rdp", seeds=1, tune=2,
                     quality=QualityConfig(per_class=20, tstr_max_epochs=2, fid_draws=1, max_manifold=50)),
    "quick": Profile(gan=dict(), gan_epochs=None, gan_scale=0.2, fed=FedConfig(rounds=5, width=16),
                     dpgan=dict(rounds=100, local_steps=1), curve_seeds=1, seeds=1,
                     quality=QualityConfig(per_class=300, tstr_max_epochs=20, fid_draws=1, max_manifold=300)),
    # paper: the converged protocol. Classifier width 16 (on chest X-ray FedAvg's best validation AUC
    # 0.994 against 0.997 at width 32, 2.4x faster: 1.0 against 2.4 s a round on one CPU thread);
    # DP-FedAvg-GAN gets HF-GAN's DP budget of rounds and D steps (400 x 5); 28 px like the quality table;
    # tune 8: the whole lr x epochs grid (at 6 of {3e-4, 1e-3, 3e-3} x {1, 2}, FedAvg chose the grid's corner,
    # lr 3e-3 with 2 epochs, on chest X-ray and brain MRI; 1e-2 was added so that the optimum can be inside)
    "paper": Profile(gan=dict(), gan_epochs=None,
                     fed=FedConfig(rounds=200, patience=10, width=16), dpgan=dict(rounds=400, local_steps=5, lr_d=2e-4,
                     lr_g=2e-4), extractor_epochs=20, seeds=5, tune=8),
}


@dataclass
class BenchmarkConfig:
    dataset: str
    methods: list[str]
    seeds: list[int]
    profile: str = "quick"
    epsilons: list[float] = field(default_factory=lambda: [10.0])  # every private method, every seed
    curve_epsilons: list[float] = field(default_factory=list)  # CURVE_METHODS only (privacy-utility curve)
    alpha: float = 0.5
    clients: int = 5
    partition: str = "dirichlet"
    delta: float = 1e-5
    data_dir: str | None = None
    device: str = "cpu"
    synthetic_ratio: float | None = None  # synthetic images per real image; None = the profile's
    mu: float | None = None  # FedProx proximal weight; None = the profile's
    gan_rounds: int | None = None  # HF-GAN rounds; None = the profile's
    gan_cache: str | None = None  # reuse finished HF-GAN runs with identical settings from here (sweeps)


def run_profile(c: BenchmarkConfig) -> Profile:
    """The run's profile with its overrides (--synthetic-ratio, --mu, --rounds) applied. One place, since
    the profile is part of the units' stamp: the benchmark, the GAN pre-training and the sweeps that
    seed a point from another run's units must all arrive at the same one."""
    prof = PROFILES[c.profile]
    if c.synthetic_ratio is not None:
        prof = replace(prof, synthetic_ratio=c.synthetic_ratio)
    if c.mu is not None:
        prof = replace(prof, mu=c.mu)
    if c.gan_rounds is not None:
        prof = replace(prof, gan=prof.gan | {"rounds": c.gan_rounds}, gan_epochs=None)
    return prof


def private_rows(c: BenchmarkConfig, prof: Profile, seed: int) -> list[tuple[float, list[str]]]:
    """The private rows a seed makes: (epsilon, methods) for every table epsilon, and for the curve
    epsilons on the profile's curve seeds, the curve methods only. Without noise DP-SGD FedAvg is
    FedAvg again (its sigma -> 0 limit is the clipping-only row), so it has no epsilon-infinity row."""
    on_curve = prof.curve_seeds is None or seed in c.seeds[:prof.curve_seeds]
    return [(eps, [m for m in c.methods if m in PRIVATE_ROWS and (eps in c.epsilons or m in CURVE_METHODS)
                   and not (m == "dp_fedavg" and eps == float("inf"))])
            for eps in c.epsilons + (c.curve_epsilons if on_curve else [])]


def profile_json(prof: Profile) -> dict:
    return {"gan": prof.gan, "gan_epochs": prof.gan_epochs, "gan_scale": prof.gan_scale, "fed": asdict(prof.fed), "dpgan": prof.dpgan,
            "synthetic_ratio": prof.synthetic_ratio, "extractor_epochs": prof.extractor_epochs, "mu": prof.mu,
            "curve_seeds": prof.curve_seeds, "accountant": prof.accountant, "tune": prof.tune, "quality": asdict(prof.quality)}

