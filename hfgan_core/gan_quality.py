"""The generator quality table, ``results/gan_quality.md``: HF-GAN's generators judged on the
validation split at several epsilons and seeds, next to an untrained generator and real data.

    python -m hfgan_core quality --datasets pneumoniamnist brainmri retinamnist --seeds 0 1 2 \\
        --epsilon inf 10 1 --out results

For each dataset: the in-domain extractor (trained on the training split only), the references
(``quality.reference_quality``: real data; an untrained generator), then one HF-GAN run per
(seed, epsilon) with the library's recipe (``TrainConfig`` defaults), judged by
``quality.generator_quality``. Each dataset's numbers go to ``<out>/<dataset>/gan_quality.json``
as they finish; ``gan_quality.md`` is rendered from whatever JSON files exist, so datasets can run
in separate processes. The test split is never read. These runs are simulations (noise derived
from the seed, so that the table is reproducible): their synthetic sets stay in their run folders,
and the released ``results/<dataset>/synthetic_eps10_seed0.npz`` come from ``train`` with noise from
OS entropy (``make release``).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .benchmark import jsonable, provenance
from .data import MedicalDataset, load_dataset
from .errors import UserError
from .extractor import load_or_train_extractor
from .models import Generator
from .quality import QualityConfig, generator_quality, reference_quality
from .synthesis import synthesize
from .train import RECIPE, TrainConfig, load_generators, preflight, trained_generators

DATASETS = ("pneumoniamnist", "brainmri", "retinamnist")
TITLES = {"pneumoniamnist": "chest X-ray (PneumoniaMNIST)", "brainmri": "brain MRI (4 tumour classes)",
          "retinamnist": "retinal fundus (RetinaMNIST)"}
# The targets, per dataset: (headline metric, {epsilon: minimum}); coverage targets below.
TARGETS = {"pneumoniamnist": ("auc", {math.inf: 0.98, 10.0: 0.96, 1.0: 0.90}),
           "brainmri": ("macro_f1", {math.inf: 0.75, 10.0: 0.70, 1.0: 0.50}),
           "retinamnist": ("auc", {math.inf: 0.78, 10.0: 0.75})}
COVERAGE_TARGETS = {math.inf: 0.5, 10.0: 0.3}
CAS_TARGETS = {"pneumoniamnist": {math.inf: 0.95, 10.0: 0.90}}


@dataclass
class QualityRunConfig:
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epsilons: list[float] = field(default_factory=lambda: [math.inf, 10.0, 1.0])
    clients: int = 5
    alpha: float = 0.5
    partition: str = "dirichlet"
    delta: float = 1e-5
    data_dir: str | None = None
    device: str = "cpu"
    gan: dict = field(default_factory=dict)  # TrainConfig overrides (tests: a tiny run)
    quality: QualityConfig = field(default_factory=QualityConfig)
    extractor_epochs: int = 5
    max_train: int | None = None  # tests only: the first images of the training split


def run_quality(config: QualityRunConfig, out: str | Path, *, progress: bool = True,
                resume: bool = False) -> dict[str, dict]:
    """Train and judge every (dataset, seed, epsilon); returns {dataset: report}. With ``resume``,
    a run folder left by an interrupted call with the same settings is continued from its
    checkpoint (or, if it finished, its saved generators are judged again) instead of retrained."""
    _check(config)
    datasets = {name: _dataset(config, name) for name in config.datasets}
    for name, ds in datasets.items():  # every run's hospitals, delta and epsilon, before any dataset's work
        preflight([_train_config(config, name, seed, eps) for seed in config.seeds for eps in config.epsilons],
                  ds.train.labels)
    out = Path(out)
    reports = {}
    for name, ds in datasets.items():
        reports[name] = _run_dataset(config, ds, out, progress, resume)
    write_markdown(out)
    return reports


def _check(c: QualityRunConfig) -> None:
    if not c.datasets or not c.seeds or not c.epsilons:
        raise UserError("--datasets, --seeds and --epsilon each need at least one value")
    bad = [e for e in c.epsilons if not e > 0]
    if bad:
        raise UserError(f"--epsilon values must be positive or inf (got {bad[0]})")
    if len(set(c.seeds)) < len(c.seeds) or len(set(c.epsilons)) < len(c.epsilons):
        raise UserError(f"--seeds {c.seeds} and --epsilon {c.epsilons} must not repeat a value")


def _run_dataset(c: QualityRunConfig, ds: MedicalDataset, out: Path, progress: bool, resume: bool) -> dict:
    prov = provenance(c.device)
    name = ds.name
    ds = replace(ds, test=None)  # nothing below may read the test split
    started = time.time()
    extractor, extractor_info = load_or_train_extractor(ds, epochs=c.extractor_epochs, device=c.device)
    qc = replace(c.quality, device=c.device)
    torch.manual_seed(12345)
    untrained = [Generator(num_classes=ds.num_classes, channels=ds.channels, image_size=ds.image_size,
                           **{k: v for k, v in _shared(c).items() if k in ("nz", "ngf", "upsample")}).to(c.device)
                 for _ in range(c.clients)]
    report = {"dataset": name, "image_size": ds.image_size, "class_names": list(ds.class_names),
              "train_counts": np.bincount(ds.train.labels, minlength=ds.num_classes).tolist(),
              "val_counts": np.bincount(ds.val.labels, minlength=ds.num_classes).tolist(),
              "config": asdict(c) | {"datasets": [name]}, "recipe": {"rule": RECIPE, "shared": _shared(c)},
              "extractor": extractor_info,
              "reference": reference_quality(ds, extractor, config=qc),
              "untrained": generator_quality(untrained, ds, extractor, config=qc), "runs": [],
              "provenance": prov}
    for seed in c.seeds:
        for eps in c.epsilons:
            run_dir = out / name / "quality_runs" / f"hfgan-seed{seed}-eps{eps}"
            cfg = _train_config(c, name, seed, eps)
            gens, trained = trained_generators(cfg, run_dir, ds, resume=resume, progress=progress)
            t0 = time.time()
            q = generator_quality(gens, ds, extractor, config=replace(qc, seed=seed))
            report["runs"].append({"seed": seed, "epsilon": eps, **trained, "eval_s": time.time() - t0,
                                   "wall_time_s": trained["train_s"] + time.time() - t0,
                                   "recipe": {k: getattr(cfg, k) for k in RECIPE["dp"]}, **q})
            if progress:
                key = TARGETS.get(name, ("auc", {}))[0]
                tqdm.write(f"[{name}] seed {seed} eps={eps}: TSTR {key} {q['tstr'][key]:.3f}, CAS {q['cas']:.3f}, "
                           f"coverage {np.round(q['coverage'], 2).tolist()} ({report['runs'][-1]['wall_time_s']:.0f} s)")
    report["wall_time_s"] = time.time() - started
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "gan_quality.json").write_text(json.dumps(jsonable(report), indent=2))
    plot_samples(ds, out / name / "quality_runs", min(c.seeds), c.epsilons, figure_path(out, name))
    return report


def _dataset(c: QualityRunConfig, name: str) -> MedicalDataset:
    ds = load_dataset(name, c.data_dir)
    if c.max_train:
        ds = replace(ds, train=replace(ds.train, images=ds.train.images[:c.max_train],
                                       labels=ds.train.labels[:c.max_train]))
    return ds


def _train_config(c: QualityRunConfig, name: str, seed: int, eps: float) -> TrainConfig:
    """The recipe's HF-GAN run of one (dataset, seed, epsilon)."""
    return TrainConfig(**(c.gan | dict(dataset=name, data_dir=c.data_dir, clients=c.clients, partition=c.partition,
                                       alpha=c.alpha, epsilon=eps, delta=c.delta, seed=seed, device=c.device,
                                       simulation_noise=True)))


def figure_path(out: str | Path, dataset: str) -> Path:
    return Path(out) / "figures" / f"quality_{dataset}_samples.png"


def plot_samples(ds, runs_dir: Path, seed: int, epsilons: list[float], path: Path, per_hospital: int = 2) -> Path:
    """Real validation images beside the released generators at each epsilon (one seed): one column
    block per epsilon, rows = classes, ``per_hospital`` images from each hospital's generator."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    k = ds.num_classes
    x, y = ds.val.tensors()
    blocks = [("real (validation)", torch.cat([x[y == c][:10] for c in range(k)]), 10)]
    for eps in sorted(epsilons, key=lambda e: -e):
        gens = load_generators(runs_dir / f"hfgan-seed{seed}-eps{eps}" / "generators.pt")
        images, _ = synthesize(gens, per_hospital * len(gens), k, seed=7)  # class-major; hospitals take turns
        blocks.append((f"HF-GAN, ε = {_eps(eps)}", images, per_hospital * len(gens)))
    fig, axes = plt.subplots(1, len(blocks), figsize=(2.6 * len(blocks), 0.32 * k + 1.0), layout="constrained")
    for ax, (title, images, nrow) in zip(axes, blocks):
        grid = make_grid(images, nrow=nrow, normalize=True, value_range=(-1, 1), padding=1).permute(1, 2, 0).numpy()
        ax.imshow(grid)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    size = ds.image_size
    axes[0].set_yticks([1 + c * (size + 1) + size / 2 for c in range(k)], ds.class_names, fontsize=7)
    fig.suptitle(f"{TITLES.get(ds.name, ds.name)}: released generators, seed {seed} (rows = classes; "
                 f"{per_hospital} images from each hospital's generator, hospitals left to right)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _shared(c: QualityRunConfig) -> dict:
    """The recipe's settings that do not depend on epsilon (TrainConfig's defaults), with overrides."""
    return {k: v for k, v in (asdict(TrainConfig()) | c.gan).items() if k not in RECIPE["dp"]}


# ---------------------------------------------------------------------------------------------
# The markdown table

def _load(path: Path) -> dict:
    report = json.loads(path.read_text())
    for r in report["runs"]:
        for k in ("epsilon", "max_epsilon"):
            r[k] = float(r[k])
    return report


def _ms(values: list[float]) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def _per_class(rows: list[list[float]]) -> str:
    arr = np.array(rows, dtype=float)  # (seeds, K)
    return " / ".join("—" if np.isnan(v) else f"{v:.2f}" for v in np.nanmean(arr, axis=0))


def _eps(e: float) -> str:
    return "∞" if math.isinf(e) else f"{e:g}"


def dataset_section(report: dict) -> str:
    name = report["dataset"]
    key, targets = TARGETS.get(name, ("auc", {}))
    lines = [f"**{TITLES.get(name, name)}** — {report['image_size']} px, classes "
             f"{', '.join(report['class_names'])}; training images per class {report['train_counts']}, "
             f"validation {report['val_counts']}",
             "",
             "| generators | seeds | ε (max over hospitals) | TSTR AUC | TSTR balanced acc. | TSTR macro-F1 | CAS "
             "| FID | FID per class | precision per class | recall per class | coverage per class "
             "| copies (fakes nearer than 95 % of val) | training time per run | target met |",
             "|" + " --- |" * 15]

    def row(label: str, runs: list[dict], seeds: str, eps_text: str, target: str) -> str:
        t = [r["tstr"] for r in runs]
        return (f"| {label} | {seeds} | {eps_text} | {_ms([x['auc'] for x in t])} | "
                f"{_ms([x['balanced_accuracy'] for x in t])} | {_ms([x['macro_f1'] for x in t])} | "
                f"{_ms([r['cas'] for r in runs])} | {_ms([r['fid'] for r in runs])} | "
                f"{_per_class([r['fid_per_class'] for r in runs])} | {_per_class([r['precision'] for r in runs])} | "
                f"{_per_class([r['recall'] for r in runs])} | {_per_class([r['coverage'] for r in runs])} | "
                f"{_ms([r['nn_below_val_p05'] for r in runs])} | {_minutes(runs)} | {target} |")

    for eps in sorted({r["epsilon"] for r in report["runs"]}, key=lambda e: -e):
        runs = [r for r in report["runs"] if r["epsilon"] == eps]
        spent = max(r["max_epsilon"] for r in runs)
        lines.append(row(f"HF-GAN, ε = {_eps(eps)}", runs, ", ".join(str(r["seed"]) for r in runs), _eps(spent),
                         _verdict(runs, key, targets.get(eps), eps, CAS_TARGETS.get(name, {}).get(eps))))
    lines.append(row("untrained generator (floor)", [report["untrained"]], "—", "—", "—"))
    lines.append(row("real images (TSTR: real training split; others: validation vs training)",
                     [report["reference"]], "—", "—", "—"))
    return "\n".join(lines)


def _minutes(runs: list[dict]) -> str:
    times = [r["train_s"] / 60 for r in runs if "train_s" in r]
    return f"{np.mean(times):.1f} min" if times else "—"


def _verdict(runs: list[dict], key: str, target: float | None, eps: float, cas_target: float | None = None) -> str:
    parts = []
    if target is not None:
        value = float(np.mean([r["tstr"][key] for r in runs]))
        parts.append(f"TSTR {key.replace('_', '-')} ≥ {target}: {'yes' if value >= target else 'no'}")
    if cas_target is not None:
        value = float(np.mean([r["cas"] for r in runs]))
        parts.append(f"CAS ≥ {cas_target}: {'yes' if value >= cas_target else 'no'}")
    cov_target = COVERAGE_TARGETS.get(eps)
    if cov_target is not None:
        worst = float(np.min(np.mean([r["coverage"] for r in runs], axis=0)))
        parts.append(f"coverage ≥ {cov_target} every class: {'yes' if worst >= cov_target else 'no'}")
    return "; ".join(parts) or "report only"


def _rule(r: dict) -> str:
    return (f"{r['rounds']} rounds of {r['d_steps']} D step(s) ({r['rounds'] * r['d_steps']} DP steps per hospital), "
            f"D's Adam β1 {r['beta1_d']}")


def write_markdown(out: str | Path) -> Path:
    """``<out>/gan_quality.md`` from every ``<out>/<dataset>/gan_quality.json`` present."""
    out = Path(out)
    reports = [_load(p) for p in sorted(out.glob("*/gan_quality.json"))]
    if not reports:
        raise UserError(f"no <dataset>/gan_quality.json under {out}; run `python -m hfgan_core quality` first")
    order = {n: i for i, n in enumerate(DATASETS)}
    reports.sort(key=lambda r: order.get(r["dataset"], len(order)))
    q = reports[0]["reference"]["config"]
    rule, rec = reports[0]["recipe"]["rule"], reports[0]["recipe"]["shared"]
    prov = reports[0]["provenance"]
    head = [
        "# Generator quality (judged without the test split: the validation split, with the training images as the real reference)",
        "",
        f"HF-GAN, {reports[0]['config']['clients']} hospitals, {reports[0]['config']['partition']} partition "
        f"(α = {reports[0]['config']['alpha']}), recipe = `TrainConfig` defaults, one rule for every dataset: "
        f"with DP {_rule(rule['dp'])}; without DP {_rule(rule['no_dp'])}; always {rec['g_steps']} G step per round, "
        f"batch {rec['batch_size']}, "
        f"loss {rec['loss']}, lr D {rec['lr_d']} / G {rec['lr_g']}, AC-GAN weight D {rec['aux_weight']} / "
        f"G {rec['g_aux_weight'] if rec['g_aux_weight'] is not None else rec['aux_weight']}, mode seeking "
        f"{rec['mode_seeking']}, generator EMA {rec['g_ema']}. ε per record of one hospital (add/remove), "
        f"δ = {reports[0]['config']['delta']}, accountant {rec['accountant'].upper()}; every noise draw derived from the "
        "run's seed (a reproducible research simulation: the guarantee assumes a trusted simulator); mean ± sample "
        "sd over seeds.",
        "",
        f"* **TSTR**: a SmallCNN trained only on {q['per_class']} synthetic images per class pooled over the "
        f"hospitals' generators (epoch chosen on a held-out {q['tstr_holdout']:.0%} of the *synthetic* set, up to "
        f"{q['tstr_max_epochs']} epochs, patience {q['tstr_patience']}), scored on the real validation split. "
        "The real-images row trains the same classifier on the real training split.",
        "* **CAS**: the in-domain extractor's accuracy on fakes w.r.t. the label they were drawn for (real row: on "
        "validation images).",
        f"* **FID** in the in-domain extractor's features (not comparable to Inception FIDs): fakes with the "
        f"validation split's class counts against the real training images, mean of {q['fid_draws']} draws; the "
        "real row is FID(validation, training), the same sample sizes.",
        f"* **Precision / recall / coverage** (k = {q['k']}): against one random half of each class's training "
        f"images (at most {q['max_manifold']}), with as many fakes; the real row scores the other half. Low "
        "recall and coverage mean mode collapse.",
        "* **Copies**: fraction of fakes whose nearest training image (pixel L2) is nearer than it is for 95 % of "
        "validation images (real validation images: 0.05 by construction); near 1 would mean copying.",
        f"* Hardware: {prov['hardware']} (the three datasets ran side by side, one process each); git "
        f"{prov['git_sha']}. Training time per run is the wall time of its rounds (a run continued with "
        "`--resume` adds its parts); judging a run takes "
        + ", ".join(f"{r['dataset']} {np.mean([x.get('eval_s', math.nan) for x in r['runs']]) / 60:.1f} min"
                    for r in reports) + ".",
    ]
    sections = [dataset_section(r) + (f"\n\n![{r['dataset']} samples](figures/{figure_path(out, r['dataset']).name})"
                                      if figure_path(out, r["dataset"]).exists() else "") for r in reports]
    text = "\n".join(head) + "\n\n" + "\n\n".join(sections) + "\n"
    path = out / "gan_quality.md"
    path.write_text(text)
    return path
