"""The benchmark: every method on identical hospitals, seeds and classifier; one table per dataset.

    python -m hfgan_core benchmark --dataset pneumoniamnist --methods all --seeds 0 1 2 \\
        --profile quick --epsilon 10 --alpha 0.5 --out results/pneumoniamnist

For each seed the hospitals are drawn once and shared by every method. The GANs train once
per (seed, epsilon) and feed all rows that use them. Every private method runs at each
``epsilons`` value (the table); the privacy-utility curve adds ``curve_epsilons`` for
``CURVE_METHODS`` only, on the profile's first ``curve_seeds`` seeds (GAN training is the
cost). Methods see the training split (as hospitals) and the validation split (model
selection) only; the test split sits in a ``SealedTest`` that hands it out once per
(method, seed, epsilon), for the final numbers.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .classifier import predict_proba
from .data import MedicalDataset, Split, load_dataset, resolve_data_dir
from .dpfedavg_gan import DPFedAvgGANConfig, train_dpfedavg_gan
from .errors import UserError
from .quality import QualityConfig, generator_quality
from .synthesis import balanced_labels, images_for_labels
from .extractor import load_or_train_extractor
from .federated import DPSpec, FedConfig, train_federated
from .metrics import classification_metrics, fid, inception_score, inception_weights, mix_accuracy, standard_fid_is
from .partition import partition
from .privacy import compute_epsilon, noise_seed, noisy_label_histogram
from .models import build_models
from .train import TrainConfig, load_generators, train

Arrays = tuple[torch.Tensor, torch.Tensor]


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
    "fedavg_steps": Method("FedAvg, as many steps as the synthetic rows"),
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
    extractor_epochs: int = 5
    prefer_64px: bool = False
    mu: float = 0.01  # FedProx
    max_train: int | None = None  # smoke only: a seeded, stratified subset of the training split
    curve_seeds: int | None = None  # how many of the seeds the extra curve epsilons run on (None: all)
    quality: QualityConfig = field(default_factory=QualityConfig)  # judging every GAN on validation
    accountant: str = "prv"  # every private method's; rdp only where speed beats tightness (smoke)
    seeds: int = 3  # how many seeds the notebooks run when not told (0, 1, ..., seeds - 1)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(gan=dict(rounds=3, batch_size=16, nz=16, ngf=8, ndf=8, synthetic_per_class=20), gan_epochs=None,
                     fed=FedConfig(rounds=2, batch_size=32, width=8), dpgan=dict(rounds=3, local_steps=1,
                     batch_size=16, nz=16, ngf=8, ndf=8), synthetic_ratio=0.2, extractor_epochs=1,
                     max_train=600, curve_seeds=1, accountant="rdp", seeds=1,
                     quality=QualityConfig(per_class=20, tstr_max_epochs=2, fid_draws=1, max_manifold=50)),
    "quick": Profile(gan=dict(), gan_epochs=None, fed=FedConfig(rounds=5, width=16),
                     dpgan=dict(rounds=100, local_steps=1), curve_seeds=1),
    "paper": Profile(gan=dict(), gan_epochs=None,
                     fed=FedConfig(rounds=200, patience=10, width=32), dpgan=dict(rounds=1000, local_steps=5, lr_d=2e-4,
                     lr_g=2e-4), extractor_epochs=20, prefer_64px=True, seeds=5),
}


class SealedTest:
    """The test split, handed out once per result key, never to a training function."""

    def __init__(self, ds: MedicalDataset) -> None:
        self._x, self._y = ds.test.tensors()
        self.reads: list[tuple] = []

    def read(self, key: tuple) -> Arrays:
        if key in self.reads:
            raise RuntimeError(f"the test split was already read for {key}: one final evaluation per result")
        self.reads.append(key)
        return self._x, self._y

    def labels(self) -> np.ndarray:
        """The test labels alone, for statistics over saved predictions (no image leaves here)."""
        return self._y.numpy()


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


def run_benchmark(config: BenchmarkConfig, out: str | Path, *, progress: bool = True,
                  echo: bool | None = None) -> dict:
    """Run every (method, seed, epsilon), then write table.csv, table.md and runs.json under ``out``.
    ``progress`` shows progress bars, ``echo`` (default: same as progress) one line per result."""
    echo = progress if echo is None else echo
    _check(config)
    prof = PROFILES[config.profile]
    if config.synthetic_ratio is not None:
        prof = replace(prof, synthetic_ratio=config.synthetic_ratio)
    if config.mu is not None:
        prof = replace(prof, mu=config.mu)
    if config.gan_rounds is not None:
        prof = replace(prof, gan=prof.gan | {"rounds": config.gan_rounds}, gan_epochs=None)
    weights = inception_weights()  # standard FID/IS too, when the Inception-v3 weights are on disk
    ds = _load(config, prof)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance(config.device)  # now: the code that runs, not whatever HEAD is when it ends
    test = SealedTest(ds)
    dev = replace(ds, test=None)  # from here on only `test.read` reaches the test split
    extractor, extractor_info = load_or_train_extractor(dev, epochs=prof.extractor_epochs, device=config.device)
    tx, ty = test.read(("extractor",))
    extractor_info = extractor_info | {"test_accuracy": float((predict_proba(extractor, tx).argmax(1) == ty.numpy()).mean())}
    started, records, hospitals, gan_quality = time.time(), [], {}, []
    for seed in config.seeds:
        seed_records, hospitals[str(seed)], seed_quality = _run_seed(config, prof, dev, seed, extractor, test, out,
                                                                     progress, echo, weights)
        records += seed_records
        gan_quality += seed_quality
    np.savez_compressed(out / "probas.npz", y_test=test.labels(),
                        **{f"{r['method']}|{r['seed']}|{r['epsilon']}": r.pop("_probas") for r in records})
    report = {"dataset": ds.name, "data_file": str(ds.path), "image_size": ds.image_size,
              "config": asdict(config), "profile": {"name": config.profile, **_profile_json(prof)},
              "extractor": extractor_info, "reference": _reference(extractor, dev, test),
              "hospitals": hospitals, "class_mix_release": class_mix_release(config.delta, prof.accountant),
              "runs": records, "gan_quality": gan_quality, "wall_time_s": time.time() - started,
              "provenance": prov}
    (out / "runs.json").write_text(json.dumps(jsonable(report), indent=2))
    write_tables(out)
    return report


MIX_SIGMA = 10.0  # noise multiplier of the per-hospital class-mix histogram the benchmark publishes


def class_mix_release(delta: float, accountant: str) -> dict:
    """What the published class mixes cost: one Gaussian release of each hospital's class counts
    (one record moves one count by 1), on top of (composed with) whatever the hospital's GAN spent."""
    eps = compute_epsilon(noise_multiplier=MIX_SIGMA, sample_rate=1.0, steps=1, delta=delta, accountant=accountant)
    return {"mechanism": "counts + N(0, sigma^2) per class, clipped at 0, normalised (add/remove one record)",
            "sigma": MIX_SIGMA, "epsilon": eps, "delta": delta, "accountant": accountant,
            "noise": "simulation (derived from the seed, like every noise draw of the benchmark)",
            "note": "per record, per hospital; composes with the GAN's epsilon for anyone who sees both. "
                    "Hospital sizes are treated as public."}


def load_runs(out: str | Path) -> dict:
    """runs.json with its "inf" strings turned back into floats."""
    report = json.loads((Path(out) / "runs.json").read_text())
    report["runs"] = [{k: _number(v) for k, v in r.items()} for r in report["runs"]]
    for key in ("epsilons", "curve_epsilons"):
        report["config"][key] = [_number(v) for v in report["config"].get(key, [])]
    return report


def _number(v):
    return float(v) if v in ("inf", "-inf", "nan") else v


def write_tables(out: str | Path) -> list[dict]:
    """table.csv and table.md, rendered from runs.json alone; returns the rows."""
    report = load_runs(out)
    rows = add_paired_deltas(summarise(report["runs"], report["config"]["methods"]), out)
    Path(out, "table.csv").write_text(table_csv(rows))
    Path(out, "table.md").write_text(table_markdown(rows, report))
    return rows


def _check(c: BenchmarkConfig) -> None:
    if c.profile not in PROFILES:
        raise UserError(f"unknown profile '{c.profile}'; choose one of {', '.join(PROFILES)}")
    unknown = [m for m in c.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from all, {', '.join(METHODS)}")
    if not c.methods or not c.seeds or not c.epsilons:
        raise UserError("--methods, --seeds and --epsilon each need at least one value")
    every_eps = c.epsilons + c.curve_epsilons
    if len(set(c.seeds)) < len(c.seeds) or len(set(every_eps)) < len(every_eps):
        raise UserError(f"--seeds {c.seeds} and --epsilon {c.epsilons} (with --curve-epsilon {c.curve_epsilons}) "
                        "must not repeat a value")
    if c.synthetic_ratio is not None and not c.synthetic_ratio > 0:
        raise UserError(f"--synthetic-ratio must be positive (got {c.synthetic_ratio})")
    if c.mu is not None and not c.mu > 0:
        raise UserError(f"--mu (FedProx) must be positive (got {c.mu})")
    if c.gan_rounds is not None and c.gan_rounds < 1:
        raise UserError(f"--rounds must be at least 1 (got {c.gan_rounds})")
    if c.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {c.device} asked for, but this machine has no CUDA GPU; use --device cpu")
    bad = [e for e in every_eps if not e > 0]
    if bad:
        raise UserError(f"--epsilon values must be positive or inf (got {bad[0]})")


def _load(c: BenchmarkConfig, prof: Profile) -> MedicalDataset:
    name = c.dataset
    if prof.prefer_64px and not name.endswith("_64") and (resolve_data_dir(c.data_dir) / f"{name}_64.npz").exists():
        name = f"{name}_64"
    ds = load_dataset(name, c.data_dir)
    if prof.max_train and len(ds.train) > prof.max_train:
        keep = np.sort(np.random.default_rng(0).permutation(len(ds.train))[:prof.max_train])
        ds = replace(ds, train=Split(ds.train.images[keep], ds.train.labels[keep]))
    return ds


def _run_seed(c: BenchmarkConfig, prof: Profile, ds: MedicalDataset, seed: int, extractor, test: SealedTest,
              out: Path, progress: bool, echo: bool, inception: str | None = None) -> tuple[list[dict], list]:
    gan_cfg = _gan_config(c, prof, ds, seed, epsilon=math.inf)
    parts = partition(ds.train.labels, c.clients, scheme=c.partition, alpha=c.alpha,
                      min_size=gan_cfg.min_client_size, seed=seed)
    x, y = ds.train.tensors()
    hospitals = [(x[idx], y[idx]) for idx in parts]
    val = ds.val.tensors()
    fed = replace(prof.fed, seed=seed, device=c.device)
    k = ds.num_classes
    # Each hospital's class mix, for per-hospital accuracy and figures: a DP histogram (exact counts
    # have sensitivity 1 and never leave this function's caller unpublished; see class_mix_release)
    mixes = np.stack([noisy_label_histogram(ds.train.labels[p], k, MIX_SIGMA,
                                            np.random.default_rng(noise_seed(True, seed, 17, i)))
                      for i, p in enumerate(parts)])  # (hospitals, K)
    records, quality = [], []

    def judge(gan: str, eps: float, generators: list, spent: float) -> None:
        """Every GAN of the benchmark gets the quality numbers (validation split only)."""
        q = generator_quality(generators, ds, extractor, config=replace(prof.quality, seed=seed, device=c.device))
        quality.append({"gan": gan, "seed": seed, "epsilon": eps, "max_epsilon": spent, **q})

    def n_synth(h: Arrays) -> int:
        return round(prof.synthetic_ratio * len(h[1]))

    def fed_run(method: str, clients=hospitals, config=fed, **kw):
        with tqdm(total=config.rounds, desc=f"{method} seed {seed} classifier", unit="round", leave=False,
                  disable=not progress) as bar:
            return train_federated(clients, val, num_classes=k, config=config,
                                   progress=lambda r, scores: bar.update(1), **kw)

    def log(method: str, eps: float, results: list, started: float, privacy: dict, generators=None) -> None:
        tx, ty = test.read((method, seed, eps))
        probas = [predict_proba(r.model, tx) for r in results]
        scores = [classification_metrics(ty.numpy(), p) for p in probas]
        m = {"method": method, "seed": seed, "epsilon": eps, **privacy,
             **{key: float(np.mean([s[key] for s in scores])) for key in scores[0]}}  # local only: mean of 5 models
        # accuracy on each hospital's class mix (its own model for "local"); label skew changes only the mix
        m["per_hospital_accuracy"] = [mix_accuracy(ty.numpy(), probas[i % len(probas)].argmax(1), mix)
                                      for i, mix in enumerate(mixes)]
        if generators is not None:
            fakes = images_for_labels(generators, ty, seed + 1000)[0]  # the test split's classes and counts
            m["fid"] = fid(extractor, fakes, tx)
            m["inception_score"], m["inception_score_sd"] = inception_score(extractor, fakes, seed=seed)
            m["fid_samples"] = [len(fakes), len(tx)]
            if inception:
                m |= standard_fid_is(fakes, tx, inception, seed=seed, device=c.device)
        m["classifier"] = {"best_round": [r.best_round for r in results], "rounds_run": [r.rounds_run for r in results],
                           "optimizer_steps": [sum(r.steps) for r in results],
                           "val_auc": [[h["auc"] for h in r.val_history] for r in results]}  # per model
        if results[0].noise_multipliers is not None:
            m["classifier"] |= {"noise_multipliers": results[0].noise_multipliers, "dp_steps": results[0].steps}
        m["_probas"] = np.stack(probas).astype(np.float32)  # (models, N, K): the paired statistics; to probas.npz
        m["wall_time_s"] = time.time() - started
        records.append(m)
        if echo:
            tqdm.write(f"[{ds.name}] seed {seed} eps={eps} {method}: acc {m['accuracy']:.3f} "
                       f"macro-F1 {m['macro_f1']:.3f} AUC {m['auc']:.3f} ({m['wall_time_s']:.0f} s)")

    plain = {"unit": None, "gan_epsilon": None, "classifier_dp": False, "released_epsilon": math.inf}
    for method in [m for m in c.methods if m not in PRIVATE_ROWS]:
        t0 = time.time()
        if method == "local":
            log(method, math.inf, [fed_run(method, clients=[h]) for h in hospitals], t0, plain)
        elif method == "centralized":
            pooled = (torch.cat([h[0] for h in hospitals]), torch.cat([h[1] for h in hospitals]))
            log(method, math.inf, [fed_run(method, clients=[pooled])], t0, plain)
        elif method == "dp_fedavg_clip":  # DP-SGD's batches and clipping, no noise: no guarantee
            spec = DPSpec(epsilon=math.inf, delta=c.delta, accountant=prof.accountant, simulation_noise=True,
                          clip_only=True)
            log(method, math.inf, [fed_run(method, dp=spec)], t0, plain)
        elif method == "fedavg_null":  # the synthetic rows' labels and ratio, images from untrained generators
            null = [images_for_labels([_null_generator(gan_cfg, ds, seed * 100 + i)], balanced_labels(n_synth(h), k),
                                      seed + 90 + i) for i, h in enumerate(hospitals)]
            log(method, math.inf, [fed_run(method, synthetic=null)], t0, plain)
        else:
            cfg = replace(fed, mu=prof.mu if method == "fedprox" else 0.0, augment=method == "fedavg_aug",
                          epoch_scale=1 + prof.synthetic_ratio if method == "fedavg_steps" else 1.0,
                          logit_adjust=method == "fedavg_balanced")
            log(method, math.inf, [fed_run(method, config=cfg)], t0, plain)

    on_curve = prof.curve_seeds is None or seed in c.seeds[:prof.curve_seeds]
    for eps in c.epsilons + (c.curve_epsilons if on_curve else []):
        wanted = [m for m in c.methods if m in PRIVATE_ROWS and (eps in c.epsilons or m in CURVE_METHODS)]
        hf_rows = [m for m in wanted if METHODS[m].gan == "hfgan"]
        if hf_rows:
            gens, gan_eps, gan_time = _hfgan(c, prof, ds, seed, eps, out, progress)
            judge("hfgan", eps, gens, gan_eps)
            own = [images_for_labels([g], balanced_labels(n_synth(h), k), seed + i)
                   for i, (g, h) in enumerate(zip(gens, hospitals))]
            shared = [images_for_labels(gens, balanced_labels(n_synth(h), k), seed + 50 + i)
                      for i, h in enumerate(hospitals)]
            privacy = {"unit": "record" if math.isfinite(gan_eps) else None, "gan_epsilon": gan_eps, "classifier_dp": False, "released_epsilon": math.inf}
            for method in hf_rows:
                t0 = time.time() - gan_time  # each row that uses the GAN carries its training time
                if method == "hfgan":
                    log(method, eps, [fed_run(method, synthetic=own)], t0, privacy, gens)
                elif method == "hfgan_shared":
                    log(method, eps, [fed_run(method, synthetic=shared)], t0, privacy, gens)
                else:  # synthetic only: post-processing of the DP generators, private end to end
                    empty = [(h[0][:0], h[1][:0]) for h in hospitals]
                    log(method, eps, [fed_run(method, clients=empty, synthetic=own)], t0,
                        privacy | {"released_epsilon": gan_eps}, gens)
        if "dpfedavg_gan" in wanted:
            t0 = time.time()
            res = train_dpfedavg_gan(hospitals, num_classes=k, config=DPFedAvgGANConfig(
                **(prof.dpgan | {"epsilon": eps, "delta": c.delta, "seed": seed, "accountant": prof.accountant,
                                 "device": c.device, "simulation_noise": True})))
            synth = [images_for_labels([res.generator], balanced_labels(n_synth(h), k), seed + 80 + i)
                     for i, h in enumerate(hospitals)]
            log("dpfedavg_gan", eps, [fed_run("dpfedavg_gan", synthetic=synth)], t0,
                {"unit": "hospital" if math.isfinite(res.epsilon) else None, "gan_epsilon": res.epsilon, "classifier_dp": False,
                 "released_epsilon": math.inf}, [res.generator])
            judge("dpfedavg_gan", eps, [res.generator], res.epsilon)
        if "dp_fedavg" in wanted:
            t0 = time.time()
            dp = (DPSpec(epsilon=eps, delta=c.delta, accountant=prof.accountant, simulation_noise=True)
                  if math.isfinite(eps) else None)
            res = fed_run("dp_fedavg", dp=dp)
            spent = max(res.epsilons) if res.epsilons else math.inf
            log("dp_fedavg", eps, [res], t0, {"unit": "record" if res.epsilons else None, "gan_epsilon": None,
                                                     "classifier_dp": not math.isinf(eps), "released_epsilon": spent})
    return records, {"sizes": [len(p) for p in parts], "dp_class_mix": mixes.round(4).tolist()}, quality


def _hfgan(c: BenchmarkConfig, prof: Profile, ds: MedicalDataset, seed: int, eps: float, out: Path,
           progress: bool) -> tuple[list, float, float]:
    """HF-GAN's released generators for (seed, eps), their max epsilon and training time. With
    ``gan_cache`` a finished run there with the very same settings is reused (a sweep over what
    happens *after* the GAN, e.g. the synthetic ratio, trains each GAN once)."""
    config = _gan_config(c, prof, ds, seed, epsilon=eps)
    run_dir = Path(c.gan_cache or out / "gan_runs") / f"hfgan-seed{seed}-eps{eps}"
    done = run_dir / "generators.pt"
    if c.gan_cache and done.exists() and json.loads((run_dir / "config.json").read_text())["config"] == \
            json.loads(json.dumps(asdict(config))):
        privacy = json.loads((run_dir / "privacy.json").read_text())
        return (load_generators(done, c.device), float(privacy.get("max_epsilon", math.inf)),
                json.loads((run_dir / "timing.json").read_text())["train_s"])
    t0 = time.time()
    shutil.rmtree(run_dir, ignore_errors=True)  # our own output from an earlier benchmark
    run = train(config, run_dir, progress=progress, dataset=ds)
    gan_eps = max((h.budget.epsilon for h in run.clients if h.budget), default=math.inf)
    return [h.sampler for h in run.clients], gan_eps, time.time() - t0


def _null_generator(gan_cfg: TrainConfig, ds: MedicalDataset, seed: int):
    """An untrained generator of HF-GAN's architecture (its BatchNorm at initial statistics)."""
    torch.manual_seed(seed)
    g, _ = build_models(num_classes=ds.num_classes, channels=ds.channels, image_size=ds.image_size, nz=gan_cfg.nz,
                        ngf=gan_cfg.ngf, ndf=gan_cfg.ndf, upsample=gan_cfg.upsample)
    return g.eval()


def _gan_config(c: BenchmarkConfig, prof: Profile, ds: MedicalDataset, seed: int, *, epsilon: float) -> TrainConfig:
    gan = TrainConfig(dataset=ds.name, data_dir=c.data_dir, clients=c.clients, partition=c.partition, alpha=c.alpha,
                      epsilon=epsilon, delta=c.delta, seed=seed, device=c.device, accountant=prof.accountant,
                      simulation_noise=True, **prof.gan)  # a research simulation: reproducible from its seeds
    if prof.gan_epochs:  # "100 epochs": rounds that show a median hospital its data that many times
        sizes = [len(p) for p in partition(ds.train.labels, c.clients, scheme=c.partition, alpha=c.alpha,
                                           min_size=gan.min_client_size, seed=seed)]
        gan = replace(gan, rounds=max(1, round(prof.gan_epochs * float(np.median(sizes)) / gan.batch_size)))
    return gan


def _reference(extractor, ds: MedicalDataset, test: SealedTest) -> dict:
    """What real images score: FID(real val, real test) is the floor a perfect generator approaches."""
    tx, _ = test.read(("reference",))
    vx, _ = ds.val.tensors()
    mean, sd = inception_score(extractor, tx)
    return {"fid_val_vs_test": fid(extractor, vx, tx), "inception_score_test": mean,
            "inception_score_test_sd": sd, "samples": [len(vx), len(tx)]}


# ---------------------------------------------------------------------------------------------
# Tables and provenance

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "inception_score", "fid", "inception_score_inception", "fid_inception")


def summarise(records: list[dict], methods: list[str]) -> list[dict]:
    """One row per (method, epsilon): mean and sd over seeds of every metric."""
    rows = []
    for method in methods:
        for eps in sorted({r["epsilon"] for r in records if r["method"] == method}):
            runs = [r for r in records if r["method"] == method and r["epsilon"] == eps]
            row = {"method": method, "label": METHODS[method].label, "epsilon_target": eps,
                   "unit": runs[0]["unit"], "classifier_dp": runs[0]["classifier_dp"], "seeds": len(runs),
                   "gan_epsilon": _max(r["gan_epsilon"] for r in runs),
                   "released_epsilon": _max(r["released_epsilon"] for r in runs),
                   "wall_time_s": float(np.mean([r["wall_time_s"] for r in runs])),
                   "one_class_runs": sum(r.get("predicted_classes", 2) <= 1 for r in runs)}
            for m in METRICS:
                values = [r[m] for r in runs if r.get(m) is not None]
                row[m] = float(np.mean(values)) if values else None
                row[f"{m}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None  # sample sd
            rows.append(row)
    return rows


def add_paired_deltas(rows: list[dict], out: str | Path, *, n_boot: int = 1000) -> list[dict]:
    """Each row's accuracy minus FedAvg's (and minus the null-image control's), paired on seeds and
    test images, with a 95 % bootstrap interval (``stats.paired_delta``), from <out>/probas.npz."""
    from .stats import paired_delta
    path = Path(out) / "probas.npz"
    if not path.exists():
        return rows
    saved = np.load(path)
    y = saved["y_test"]

    def probas(method: str, eps: float) -> dict[int, np.ndarray]:
        prefix = f"{method}|"
        return {int(k.split("|")[1]): saved[k] for k in saved.files
                if k.startswith(prefix) and float(k.split("|")[2]) == eps}

    def accuracy(labels: np.ndarray, p: np.ndarray) -> float:  # mean over the row's models
        return float(np.mean(p.argmax(-1) == labels))
    for row in rows:
        mine = probas(row["method"], row["epsilon_target"])
        for base, key in (("fedavg", "delta_vs_fedavg"), ("fedavg_null", "delta_vs_null")):
            theirs = probas(base, math.inf)
            seeds = sorted(set(mine) & set(theirs))
            d = (None if row["method"] == base or not seeds else
                 paired_delta(y, [mine[s] for s in seeds], [theirs[s] for s in seeds], score=accuracy, n_boot=n_boot))
            row |= {key: d and d["delta"], f"{key}_low": d and d["low"], f"{key}_high": d and d["high"]}
    return rows


def _max(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def table_csv(rows: list[dict]) -> str:
    import csv
    import io
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _eps(v: float | None) -> str:
    return "—" if v is None else ("∞" if math.isinf(v) else f"{v:.2f}")


def table_markdown(rows: list[dict], report: dict) -> str:
    standard = any(r["fid_inception"] is not None for r in rows)
    paired = any(r.get("delta_vs_fedavg") is not None for r in rows)
    head = ("| method | ε target | GAN ε (unit) | classifier DP | ε of released classifier | accuracy | balanced acc. "
            "| macro-F1 | AUC |" + (" Δ acc. vs FedAvg [95 % CI] | Δ acc. vs null images [95 % CI] |" if paired else "")
            + " IS | FID |" + (" IS (Inception-v3) | FID (Inception-v3) |" if standard else ""))
    lines = [head, "|" + " --- |" * (11 + 2 * paired + 2 * standard)]
    for r in rows:
        def cell(m: str) -> str:
            if r[m] is None:
                return "—"
            return f"{r[m]:.3f}" + (f" ± {r[m + '_sd']:.3f}" if r[m + "_sd"] is not None else "")

        def delta(key: str) -> str:
            if r.get(key) is None:
                return "—"
            return f"{r[key]:+.3f} [{r[key + '_low']:+.3f}, {r[key + '_high']:+.3f}]"
        one_class = f" †{r['one_class_runs']}" if r.get("one_class_runs") else ""
        gan = "—" if r["gan_epsilon"] is None else _eps(r["gan_epsilon"]) + (f" ({r['unit']})" if r["unit"] else "")
        target = _eps(r["epsilon_target"]) if r["method"] in PRIVATE_ROWS else "—"
        lines.append(f"| {r['label']} | {target} | {gan} | {'yes' if r['classifier_dp'] else 'no'} | "
                     f"{_eps(r['released_epsilon'])} | {cell('accuracy')}{one_class} | {cell('balanced_accuracy')} | "
                     f"{cell('macro_f1')} | {cell('auc')} |"
                     + (f" {delta('delta_vs_fedavg')} | {delta('delta_vs_null')} |" if paired else "")
                     + f" {cell('inception_score')} | {cell('fid')} |"
                     + (f" {cell('inception_score_inception')} | {cell('fid_inception')} |" if standard else ""))
    return "\n".join(lines) + "\n\n" + quality_markdown(report) + footnotes(report) + "\n"


def quality_markdown(report: dict) -> str:
    """Every GAN the benchmark trained, judged on the validation split (``quality``): mean over seeds."""
    entries = report.get("gan_quality") or []
    if not entries:
        return ""
    lines = ["Generator quality (validation split; `quality.py`): TSTR = classifier trained on synthetic images "
             "only, scored on real validation images; CAS = in-domain extractor's accuracy on fakes; coverage = "
             "worst class (mode collapse).", "",
             "| generators | ε target | seeds | TSTR AUC | TSTR macro-F1 | CAS | FID | coverage (worst class) |",
             "|" + " --- |" * 8]
    for gan in dict.fromkeys(e["gan"] for e in entries):
        for eps in sorted({float(e["epsilon"]) for e in entries if e["gan"] == gan}):
            runs = [e for e in entries if e["gan"] == gan and float(e["epsilon"]) == eps]

            def mean(f) -> str:
                return f"{np.mean([f(r) for r in runs]):.3f}"
            lines.append(f"| {GAN_LABELS.get(gan, gan)} | {_eps(eps)} | {len(runs)} | "
                         f"{mean(lambda r: r['tstr']['auc'])} | {mean(lambda r: r['tstr']['macro_f1'])} | "
                         f"{mean(lambda r: r['cas'])} | {mean(lambda r: r['fid'])} | "
                         f"{mean(lambda r: min(r['coverage']))} |")
    return "\n".join(lines) + "\n\n"


def footnotes(report: dict) -> str:
    c, ex, ref, prov = report["config"], report["extractor"], report["reference"], report["provenance"]
    n_fid = next((r["fid_samples"] for r in report["runs"] if "fid_samples" in r), None)
    return "\n\n".join([
        f"Dataset `{report['dataset']}` ({report['image_size']} px), {c['clients']} hospitals, {c['partition']} "
        f"partition (α = {c['alpha']}), profile `{report['profile']['name']}`, seeds {c['seeds']}; mean ± sample sd over seeds, "
        "test split read once per row and seed; model and round selection on the validation split."
        + (" **A preview**: the quick profile stops every classifier after "
           f"{report['profile'].get('fed', {}).get('rounds', '?')} rounds, before it has converged; the `paper` "
           "profile trains until validation stops improving." if report["profile"]["name"] == "quick" else "")
        + _curve_note(report),
        "Balanced accuracy: mean recall over classes. † n: in n of the seeds the classifier predicts one class "
        "only (its accuracy is then the class prior). Δ: the row's test accuracy minus FedAvg's (or minus FedAvg + "
        "null images': untrained generators, the same balanced labels and ratio), paired on seeds and test images, "
        "mean over seeds with a 95 % bootstrap interval over both (1,000 replicates; `stats.paired_delta`).",
        f"ε: per record of one hospital (unit 'record') or per whole hospital ('hospital', DP-FedAvg-GAN), "
        f"δ = {c['delta']}, Opacus {report['profile'].get('accountant', 'prv').upper()} accountant, max over "
        "hospitals. Only rows whose classifier is DP or trained on DP synthetic images alone release a private "
        "classifier; the others train on real images without DP (ε = ∞).",
        f"IS and FID: in-domain extractor `{ex['name']}` (SmallCNN trained on the real training split only, "
        f"{ex['epochs']} epochs; its test accuracy {ex['test_accuracy']:.3f}), not comparable to published FIDs"
        + ("; Inception-v3 columns: torchmetrics with the standard FID weights, images upscaled to 299 px"
           if any("fid_inception" in r for r in report["runs"]) else " (no Inception-v3 weights given: "
           "set HFGAN_INCEPTION_WEIGHTS for standard FID/IS)") + ". FID between generated images with the test split's labels and the real test images "
        f"({n_fid[0] if n_fid else '?'} vs {n_fid[1] if n_fid else '?'} images). Real-image reference: "
        f"FID(val, test) = {ref['fid_val_vs_test']:.3f}, IS(test) = {ref['inception_score_test']:.3f}.",
        f"Hardware: {prov['hardware']}; total wall time {report['wall_time_s'] / 60:.1f} min; git {prov['git_sha']}"
        + (f" ({prov['note']})." if prov.get("note") else ".")])


def _curve_note(report: dict) -> str:
    curve = report["config"].get("curve_epsilons") or []
    if not curve:
        return ""
    n = report["profile"].get("curve_seeds")
    seeds = report["config"]["seeds"][:n] if n else report["config"]["seeds"]
    return (f" Rows at ε ∈ {{{', '.join(_eps(e) for e in curve)}}} are the privacy–utility curve: "
            f"{', '.join(METHODS[m].label for m in CURVE_METHODS)} only, seed(s) {seeds}"
            + (" (no ± sd from one seed)." if len(seeds) == 1 else "."))


def provenance(device: str) -> dict:
    import importlib.metadata as md
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        sha, dirty = "unknown", False
    packages = ("torch", "torchvision", "opacus", "numpy", "scikit-learn", "torchmetrics")
    return {"git_sha": sha + ("+dirty" if dirty else ""), "device": device,
            "hardware": f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                        f"{torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'}",
            "python": platform.python_version(), "versions": {p: md.version(p) for p in packages}}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _profile_json(prof: Profile) -> dict:
    return {"gan": prof.gan, "gan_epochs": prof.gan_epochs, "fed": asdict(prof.fed), "dpgan": prof.dpgan,
            "synthetic_ratio": prof.synthetic_ratio, "extractor_epochs": prof.extractor_epochs, "mu": prof.mu,
            "curve_seeds": prof.curve_seeds, "accountant": prof.accountant, "quality": asdict(prof.quality)}


def jsonable(o):
    """inf -> "inf" (JSON has no infinity); containers recursively; paths and the like as text."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    return o if isinstance(o, (str, int, float, bool, type(None))) else str(o)
