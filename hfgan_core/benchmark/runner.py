"""The benchmark: every method on identical hospitals, seeds and classifier; one table per dataset.

For each seed the hospitals are drawn once and shared by every method. The GANs train once
per (seed, epsilon) and feed all rows that use them. Every private method runs at each
``epsilons`` value (the table); the privacy-utility curve adds ``curve_epsilons`` for
``CURVE_METHODS`` only, on the profile's first ``curve_seeds`` seeds (GAN training is the
cost). Methods see the training split (as hospitals) and the validation split (model
selection) only; the test split sits in a ``SealedTest`` that hands it out once per
(method, seed, epsilon), for the final numbers. Every finished result is kept in
``<out>/units`` (``units``), so ``resume`` continues a stopped run instead of starting over.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import client as cl
from ..classifier import predict_proba
from ..data import MedicalDataset, Split, load_dataset, resolve_data_dir
from ..device import require_device
from ..dpfedavg_gan import DPFedAvgGANConfig, train_dpfedavg_gan
from ..errors import UserError
from ..quality import generator_quality
from ..synthesis import balanced_labels, images_for_labels
from ..extractor import CACHE, load_or_train_extractor
from ..federated import DPSpec, FedConfig, FedResult, train_federated
from ..metrics import classification_metrics, fid, inception_score, inception_weights, mix_accuracy, standard_fid_is
from ..privacy import compute_epsilon, config_key, noise_seed, noisy_label_histogram
from ..models import build_models
from ..train import TrainConfig, hospital_parts, preflight, trained_generators
from .config import METHODS, PRIVATE_ROWS, PROFILES, BenchmarkConfig, Profile, private_rows, profile_json, run_profile
from .provenance import jsonable, provenance
from .tables import write_tables
from .tuning import Tuner
from .units import Units, code_hash, elapsed_s, file_hash

Arrays = tuple[torch.Tensor, torch.Tensor]


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



def run_benchmark(config: BenchmarkConfig, out: str | Path, *, progress: bool = True,
                  echo: bool | None = None, resume: bool = False, workers: int = 1,
                  threads: int | None = None) -> dict:
    """Run every (method, seed, epsilon), then write table.csv, table.md and runs.json under ``out``.
    ``progress`` shows progress bars, ``echo`` (default: same as progress) one line per result;
    ``resume`` reuses the results a stopped run with the same settings and code finished.
    ``workers`` > 1 first runs the rows as jobs in that many processes (``jobs``; ``threads`` torch
    threads each, default cores / workers), then assembles the tables from their units as a resumed
    run would: the same numbers as one process, sooner where one process leaves the machine idle."""
    echo = progress if echo is None else echo
    _check(config)
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    prof = run_profile(config)
    weights = inception_weights()  # standard FID/IS too, when the Inception-v3 weights are on disk
    ds = _load(config, prof)
    _preflight(config, prof, ds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance(config.device)  # now: the code that runs, not whatever HEAD is when it ends
    units = Units(out / "units", _stamp(config, prof, ds), resume=resume, provenance=prov)
    test = SealedTest(ds)
    dev = replace(ds, test=None)  # from here on only `test.read` reaches the test split
    extractor, extractor_info = _extractor(units, dev, epochs=prof.extractor_epochs, device=config.device)
    if workers > 1:  # every row as a unit, made in worker processes; the loop below then only collects them
        from .jobs import run_jobs
        run_jobs(config, out, workers=workers, threads=threads, resume=units.resumed, echo=echo)
    tx, ty = test.read(("extractor",))
    extractor_info = extractor_info | {"test_accuracy": float((predict_proba(extractor, tx).argmax(1) == ty.numpy()).mean())}
    records, hospitals, gan_quality = [], {}, []
    tuner = Tuner(k=prof.tune)  # every classifier: the same number of configurations, chosen on validation
    tuner.log = units.get(("tuning",)) or {}  # the choices an earlier invocation made (resume)
    for seed in config.seeds:
        seed_records, hospitals[str(seed)], seed_quality = _run_seed(config, prof, dev, seed, extractor, test, out,
                                                                     tuner, units, progress, echo, weights)
        records += seed_records
        gan_quality += seed_quality
    np.savez_compressed(out / "probas.npz", y_test=test.labels(),
                        **{f"{r['method']}|{r['seed']}|{r['epsilon']}": r.pop("_probas") for r in records})
    report = {"dataset": ds.name, "data_file": str(ds.path), "image_size": ds.image_size,
              "config": asdict(config), "profile": {"name": config.profile, **profile_json(prof)},
              "extractor": extractor_info, "reference": _reference(extractor, dev, test),
              "hospitals": hospitals, "class_mix_release": class_mix_release(config.delta, prof.accountant),
              "runs": records, "gan_quality": gan_quality, "tuning": tuner.log}
    invocations = units.invocations()  # more than one when the run was resumed or had workers
    report |= {"wall_time_s": elapsed_s([i for i in invocations if not i.get("worker")]),  # side by side: once
               "worker_time_s": sum(i["wall_time_s"] for i in invocations if i.get("worker")),
               "invocations": invocations, "provenance": prov}
    (out / "runs.json").write_text(json.dumps(jsonable(report), indent=2))
    write_tables(out)
    return report


def run_job(config: BenchmarkConfig, out: str | Path, *, resume: bool, echo: bool = False) -> None:
    """One job of a parallel run (``jobs``): the rows of ``config`` (one seed), written as units
    under ``out``, whose stamp and extractor the run made before it started the jobs; no tables.
    ``resume``: the run's own flag (a GAN run folder left by an earlier run is reused only then)."""
    _check(config)  # in this process too: the device's settings (TF32 off on CUDA)
    prof = run_profile(config)
    ds = _load(config, prof)
    units = Units(Path(out) / "units", _stamp(config, prof, ds), resume=True, provenance=provenance(config.device),
                  worker=True)
    units.resumed = resume  # the folder is this run's (opened, not wiped); whether earlier runs count is the run's
    dev = replace(ds, test=None)
    extractor, _ = _extractor(units, dev, epochs=prof.extractor_epochs, device=config.device)
    tuner = Tuner(k=prof.tune)
    tuner.log = units.get(("tuning",)) or {}  # the choices of the jobs this one waited for
    for seed in config.seeds:
        _run_seed(config, prof, dev, seed, extractor, SealedTest(ds), Path(out), tuner, units, False, echo,
                  inception_weights())


MIX_SIGMA = 10.0  # noise multiplier of the per-hospital class-mix histogram the benchmark publishes


def _data_id(ds: MedicalDataset) -> str:
    """Which data a run trains on, as part of every simulation noise key: runs on other data never
    share a draw (f(D) + σz and g(D') + σz would give f(D) - g(D') without noise)."""
    return f"{ds.name}: {len(ds.train)} training images"


def class_mixes(c: BenchmarkConfig, ds: MedicalDataset, parts: list[np.ndarray], seed: int) -> np.ndarray:
    """Each hospital's class mix, for per-hospital accuracy and figures: a DP histogram (exact counts
    have sensitivity 1 and are never published; the cost is class_mix_release), one draw per hospital,
    seed, data and partition. (hospitals, K)"""
    split = config_key({"data": _data_id(ds), "partition": c.partition, "alpha": c.alpha, "clients": c.clients})
    return np.stack([noisy_label_histogram(ds.train.labels[p], ds.num_classes, MIX_SIGMA,
                                           np.random.default_rng(noise_seed(True, seed, 17, i, split)))
                     for i, p in enumerate(parts)])


def class_mix_release(delta: float, accountant: str) -> dict:
    """What the published class mixes cost: one Gaussian release of each hospital's class counts
    (one record moves one count by 1), on top of (composed with) whatever the hospital's GAN spent."""
    eps = compute_epsilon(noise_multiplier=MIX_SIGMA, sample_rate=1.0, steps=1, delta=delta, accountant=accountant)
    return {"mechanism": "counts + N(0, sigma^2) per class, clipped at 0, normalised (add/remove one record)",
            "sigma": MIX_SIGMA, "epsilon": eps, "delta": delta, "accountant": accountant,
            "noise": "simulation (derived from the seed, like every noise draw of the benchmark)",
            "note": "per record, per hospital; composes with the GAN's epsilon for anyone who sees both. "
                    "Hospital sizes are treated as public."}



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
    require_device(c.device)
    bad = [e for e in every_eps if not e > 0]
    if bad:
        raise UserError(f"--epsilon values must be positive or inf (got {bad[0]})")


def _preflight(c: BenchmarkConfig, prof: Profile, ds: MedicalDataset) -> None:
    """Refuse, before ``out`` is touched (a fresh run wipes its earlier units), what HF-GAN's runs would
    refuse later (``train.preflight``): every seed's hospitals (--clients, --alpha, --partition) and, at
    the smallest epsilon a seed trains HF-GAN at, --delta and that epsilon. (The DP classifier's and
    DP-FedAvg-GAN's calibrations are not checked here: they fail only where HF-GAN's check fails first.)"""
    def hfgan_eps(seed: int) -> float:
        private = [eps for eps, methods in private_rows(c, prof, seed)
                   if not math.isinf(eps) and any(METHODS[m].gan == "hfgan" for m in methods)]
        return min(private, default=math.inf)
    preflight([_gan_config(c, prof, ds, seed, epsilon=hfgan_eps(seed)) for seed in c.seeds], ds.train.labels)


def _stamp(c: BenchmarkConfig, prof: Profile, ds: MedicalDataset) -> dict:
    """What a unit depends on. Not the lists of methods, seeds and epsilons: a run may add some."""
    settings = {k: v for k, v in asdict(c).items()
                if k not in ("methods", "seeds", "epsilons", "curve_epsilons", "data_dir", "gan_cache")}
    return {"settings": settings, "profile": profile_json(prof), "data": f"{ds.name} sha256 {file_hash(ds.path)}",
            "code": f"hfgan_core sha256 {code_hash()}"}


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
              out: Path, tuner: Tuner, units: Units, progress: bool, echo: bool,
              inception: str | None = None) -> tuple[list[dict], dict, list]:
    gan_cfg = _gan_config(c, prof, ds, seed, epsilon=math.inf)
    parts = hospital_parts(gan_cfg, ds.train.labels)  # HF-GAN's hospitals, shared by every method
    x, y = ds.train.tensors()
    hospitals = [(x[idx], y[idx]) for idx in parts]
    val = ds.val.tensors()
    fed = replace(prof.fed, seed=seed, device=c.device)
    k = ds.num_classes
    data_id = _data_id(ds)
    mixes = class_mixes(c, ds, parts, seed)  # (hospitals, K)
    records, quality = [], []

    def judge(gan: str, eps: float, generators: list, spent: float) -> None:
        """Every GAN of the benchmark gets the quality numbers (never the test split); a judgement of
        other generators (the GAN trained again after a stop) is made again."""
        key = ("quality", gan, seed, eps)
        q = units.get(key)
        if q is None or (generators and q.get("generators") != generators_sha256(generators)):
            q = {"gan": gan, "seed": seed, "epsilon": eps, "max_epsilon": spent,
                 "generators": generators_sha256(generators),
                 **generator_quality(generators, ds, extractor, config=replace(prof.quality, seed=seed, device=c.device))}
            units.put(key, q)
        quality.append(q)

    def same_gan(done: dict | None, generators: list) -> dict | None:
        """A finished row of a GAN block, if it was made from these very generators (else None: redo it)."""
        return done if done is not None and done.get("generators") == generators_sha256(generators) else None

    def finished(method: str, eps: float) -> dict | None:
        """The row's result from an earlier invocation (``resume``), with its test probabilities."""
        unit = units.get(("row", method, seed, eps))
        return None if unit is None else unit | {"_probas": unit.pop("_array")}

    def n_synth(h: Arrays) -> int:
        return round(prof.synthetic_ratio * len(h[1]))

    def fed_run(method: str, config: FedConfig, dp: DPSpec | None, clients: list, **kw) -> FedResult:
        with tqdm(total=config.rounds, desc=f"{method} seed {seed} classifier", unit="round", leave=False,
                  disable=not progress) as bar:
            return train_federated(clients, val, num_classes=k, config=config, dp=dp,
                                   progress=lambda r, scores: bar.update(1), **kw)

    def fit(method: str, eps: float, base: FedConfig = fed, dp: DPSpec | None = None, groups=None,
            **kw) -> tuple[list[FedResult], dict]:
        """The row's classifier(s) at its tuned point (tuned here on the first seed that gets here);
        ``groups``: the hospitals each model trains on (local only: one model per hospital). A DP-SGD
        classifier (and its clipping-only control) trains to its round cap, the round kept by validation:
        its noise is calibrated for the cap, and the profile's early stop ended one at round 55 of 200
        with validation AUC 0.912, 0.943 at the cap (chest X-ray, results/paper_runs/README.md)."""
        groups = groups or [hospitals]
        if dp is not None:
            base = replace(base, patience=None)
        return tuner.fit(method, eps, seed, lambda cfg, spec: [fed_run(method, cfg, spec, g, **kw) for g in groups],
                         base, dp, parent_eps=c.epsilons[0])  # the equal-steps control: HF-GAN's headline row

    def log(method: str, eps: float, fitted: tuple[list[FedResult], dict], started: float, privacy: dict,
            generators=None) -> None:
        results, point = fitted
        tx, ty = test.read((method, seed, eps))
        probas = [predict_proba(r.model, tx) for r in results]
        scores = [classification_metrics(ty.numpy(), p) for p in probas]
        m = {"method": method, "seed": seed, "epsilon": eps, **privacy,
             **{key: float(np.mean([s[key] for s in scores])) for key in scores[0]}}  # local only: mean of 5 models
        # accuracy on each hospital's class mix (its own model for "local"); label skew changes only the mix
        m["per_hospital_accuracy"] = [mix_accuracy(ty.numpy(), probas[i % len(probas)].argmax(1), mix)
                                      for i, mix in enumerate(mixes)]
        m["one_class_models"] = sum(s["predicted_classes"] <= 1 for s in scores)  # local only: of 5 models
        if generators is not None:
            m["generators"] = generators_sha256(generators)  # a block's rows and judgement: one training
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
        m["hyperparameters"] = point  # the tuned point (runs.json "tuning": the grid and every point tried)
        m["wall_time_s"] = time.time() - started
        tuner.log = units.merge(("tuning",), tuner.log)  # the choice this row's fit may have made, before the row
        m["_probas"] = np.stack(probas).astype(np.float32)  # (models, N, K): the paired statistics; to probas.npz
        units.put(("row", method, seed, eps), {k: v for k, v in m.items() if k != "_probas"}, m["_probas"])
        records.append(m)
        if echo:
            tqdm.write(f"[{ds.name}] seed {seed} eps={eps} {method}: acc {m['accuracy']:.3f} "
                       f"macro-F1 {m['macro_f1']:.3f} AUC {m['auc']:.3f} ({m['wall_time_s']:.0f} s)")

    plain = {"unit": None, "gan_epsilon": None, "classifier_dp": False, "released_epsilon": math.inf}

    def plain_row(method: str) -> None:
        t0 = time.time()
        if done := finished(method, math.inf):
            records.append(done)
        elif method == "local":
            log(method, math.inf, fit(method, math.inf, groups=[[h] for h in hospitals]), t0, plain)
        elif method == "centralized":
            pooled = (torch.cat([h[0] for h in hospitals]), torch.cat([h[1] for h in hospitals]))
            log(method, math.inf, fit(method, math.inf, groups=[[pooled]]), t0, plain)
        elif method == "dp_fedavg_clip":  # DP-SGD's batches and clipping, no noise: no guarantee
            spec = DPSpec(epsilon=math.inf, delta=c.delta, accountant=prof.accountant, simulation_noise=True,
                          clip_only=True, data_id=data_id)
            log(method, math.inf, fit(method, math.inf, dp=spec), t0, plain)
        elif method == "fedavg_null":  # the synthetic rows' labels and ratio, images from untrained generators
            null = [images_for_labels([_null_generator(gan_cfg, ds, seed * 100 + i)], balanced_labels(n_synth(h), k),
                                      seed + 90 + i) for i, h in enumerate(hospitals)]
            log(method, math.inf, fit(method, math.inf, synthetic=null), t0, plain)
        else:
            cfg = replace(fed, mu=prof.mu if method == "fedprox" else 0.0, augment=method == "fedavg_aug",
                          epoch_scale=1 + prof.synthetic_ratio if method == "fedavg_steps" else 1.0,
                          logit_adjust=method == "fedavg_balanced")
            log(method, math.inf, fit(method, math.inf, base=cfg), t0, plain)

    # the equal-steps control takes HF-GAN's local epochs (tuning.INHERIT): it runs after HF-GAN's rows
    last = ["fedavg_steps"] if "hfgan" in c.methods else []
    for method in [m for m in METHODS if m in c.methods and m not in PRIVATE_ROWS and m not in last]:
        plain_row(method)  # in METHODS' order, whatever --methods says: FedAvg before FedProx and augmentation
    for eps, wanted in private_rows(c, prof, seed):
        hf_rows = [m for m in wanted if METHODS[m].gan == "hfgan"]
        hf_done = {m: finished(m, eps) for m in hf_rows}
        if hf_rows and (None in hf_done.values() or not units.has(("quality", "hfgan", seed, eps))):
            gens, gan_eps, gan_time = _hfgan(c, prof, ds, seed, eps, out, progress, resume=units.resumed,
                                             stamp=units.stamp)
            hf_done = {m: same_gan(r, gens) for m, r in hf_done.items()}
            judge("hfgan", eps, gens, gan_eps)
            own = [images_for_labels([g], balanced_labels(n_synth(h), k), seed + i)
                   for i, (g, h) in enumerate(zip(gens, hospitals))]
            shared = [images_for_labels(gens, balanced_labels(n_synth(h), k), seed + 50 + i)
                      for i, h in enumerate(hospitals)]
            privacy = {"unit": "record" if math.isfinite(gan_eps) else None, "gan_epsilon": gan_eps, "classifier_dp": False, "released_epsilon": math.inf}
            for method in hf_rows:
                t0 = time.time() - gan_time  # each row that uses the GAN carries its training time
                if hf_done[method]:
                    records.append(hf_done[method])
                elif method == "hfgan":
                    log(method, eps, fit(method, eps, synthetic=own), t0, privacy, gens)
                elif method == "hfgan_shared":
                    log(method, eps, fit(method, eps, synthetic=shared), t0, privacy, gens)
                else:  # synthetic only: post-processing of the DP generators, private end to end
                    empty = [(h[0][:0], h[1][:0]) for h in hospitals]
                    log(method, eps, fit(method, eps, groups=[empty], synthetic=own), t0,
                        privacy | {"released_epsilon": gan_eps}, gens)
        elif hf_rows:  # every row and the judgement finished in an earlier invocation
            records += list(hf_done.values())
            judge("hfgan", eps, [], math.nan)
        dpgan_done = finished("dpfedavg_gan", eps) if "dpfedavg_gan" in wanted else None
        if dpgan_done and units.has(("quality", "dpfedavg_gan", seed, eps)):
            records.append(dpgan_done)
            judge("dpfedavg_gan", eps, [], math.nan)
        elif "dpfedavg_gan" in wanted:
            t0 = time.time()
            res = train_dpfedavg_gan(hospitals, num_classes=k, config=DPFedAvgGANConfig(
                **(prof.dpgan | {"epsilon": eps, "delta": c.delta, "seed": seed, "accountant": prof.accountant,
                                 "device": c.device, "simulation_noise": True, "data_id": data_id})))
            synth = [images_for_labels([res.generator], balanced_labels(n_synth(h), k), seed + 80 + i)
                     for i, h in enumerate(hospitals)]
            if dpgan_done := same_gan(dpgan_done, [res.generator]):
                records.append(dpgan_done)
            else:
                log("dpfedavg_gan", eps, fit("dpfedavg_gan", eps, synthetic=synth), t0,
                    {"unit": "hospital" if math.isfinite(res.epsilon) else None, "gan_epsilon": res.epsilon,
                     "classifier_dp": False, "released_epsilon": math.inf}, [res.generator])
            judge("dpfedavg_gan", eps, [res.generator], res.epsilon)
        if "dp_fedavg" in wanted and (done := finished("dp_fedavg", eps)):
            records.append(done)
        elif "dp_fedavg" in wanted:
            t0 = time.time()
            dp = DPSpec(epsilon=eps, delta=c.delta, accountant=prof.accountant, simulation_noise=True, data_id=data_id)
            fitted = fit("dp_fedavg", eps, dp=dp)
            log("dp_fedavg", eps, fitted, t0, {"unit": "record", "gan_epsilon": None, "classifier_dp": True,
                                               "released_epsilon": max(fitted[0][0].epsilons)})
    for method in [m for m in c.methods if m in last]:
        plain_row(method)
    return records, {"sizes": [len(p) for p in parts], "dp_class_mix": mixes.round(4).tolist()}, quality


def _hfgan(c: BenchmarkConfig, prof: Profile, ds: MedicalDataset, seed: int, eps: float, out: Path,
           progress: bool, *, resume: bool, stamp: dict) -> tuple[list, float, float]:
    """HF-GAN's released generators for (seed, eps), their max epsilon and training time. A run
    with the very same settings is continued or reused when resuming, and always from ``gan_cache``
    (a sweep over what happens *after* the GAN, e.g. the synthetic ratio, trains each GAN once)."""
    config = _gan_config(c, prof, ds, seed, epsilon=eps)
    run_dir = Path(c.gan_cache or out / "gan_runs") / f"hfgan-seed{seed}-eps{eps}"
    gens, info = trained_generators(config, run_dir, ds, resume=resume or bool(c.gan_cache), progress=progress,
                                    stamp={k: stamp[k] for k in ("code", "data")})  # reused only under both
    return gens, info["max_epsilon"], info["train_s"]


def _extractor(units: Units, dev: MedicalDataset, *, epochs: int, device: str, cache: Path = CACHE):
    """Every FID/IS of one run from one extractor: the first invocation records its file's sha256,
    and a resumed one loads that very file or stops (``load_or_train_extractor``'s expect_sha256)."""
    scored_with = units.get(("extractor",))
    extractor, info = load_or_train_extractor(dev, epochs=epochs, device=device, cache=cache,
                                              expect_sha256=scored_with and scored_with["weights_sha256"])
    if scored_with is None:
        units.put(("extractor",), {"weights_sha256": info["weights_sha256"]})
    return extractor, info


def generators_sha256(generators: list) -> str:
    """Which generators a row or judgement was made from: a hash of their weights and buffers."""
    h = hashlib.sha256()
    for g in generators:
        for name, t in g.state_dict().items():
            h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _null_generator(gan_cfg: TrainConfig, ds: MedicalDataset, seed: int):
    """An untrained generator of HF-GAN's architecture, released the way HF-GAN's are: standing
    BatchNorm statistics from its own samples, then eval mode (``train.trained_generators``), so
    the control differs from HF-GAN's images by the training alone."""
    torch.manual_seed(seed)
    g, _ = build_models(num_classes=ds.num_classes, channels=ds.channels, image_size=ds.image_size, nz=gan_cfg.nz,
                        ngf=gan_cfg.ngf, ndf=gan_cfg.ndf, upsample=gan_cfg.upsample)
    cl.standing_bn_stats(g, seed=seed)
    return g


def _gan_config(c: BenchmarkConfig, prof: Profile, ds: MedicalDataset, seed: int, *, epsilon: float) -> TrainConfig:
    gan = TrainConfig(dataset=ds.name, data_dir=c.data_dir, clients=c.clients, partition=c.partition, alpha=c.alpha,
                      epsilon=epsilon, delta=c.delta, seed=seed, device=c.device, accountant=prof.accountant,
                      simulation_noise=True, **prof.gan)  # a research simulation: reproducible from its seeds
    if prof.gan_epochs:  # "100 epochs": rounds that show a median hospital its data that many times
        sizes = [len(p) for p in hospital_parts(gan, ds.train.labels)]
        gan = replace(gan, rounds=max(1, round(prof.gan_epochs * float(np.median(sizes)) / gan.batch_size)))
    elif prof.gan_scale != 1 and "rounds" not in prof.gan:  # a fraction of the recipe's rounds
        gan = replace(gan, rounds=max(1, round(gan.rounds * prof.gan_scale)))
    return gan


def _reference(extractor, ds: MedicalDataset, test: SealedTest) -> dict:
    """What real images score: FID(real val, real test) is the floor a perfect generator approaches."""
    tx, _ = test.read(("reference",))
    vx, _ = ds.val.tensors()
    mean, sd = inception_score(extractor, tx)
    return {"fid_val_vs_test": fid(extractor, vx, tx), "inception_score_test": mean,
            "inception_score_test_sd": sd, "samples": [len(vx), len(tx)]}

