"""Sweeps around the headline tables: the same benchmark with one setting varied, same seeds.

- ``run_noniid``: does HF-GAN help more when hospitals differ? FedAvg, FedAvg + null images (the
  control), HF-GAN and centralized training at Dirichlet label skew alpha in {0.1, 0.5, 1.0} and
  an IID split (the headline tables stay at alpha = 0.5).
- ``run_ratio``: how many synthetic images per real one? HF-GAN against the controls that match
  it (FedAvg, FedAvg with as many steps, FedAvg + as many null images) at ratios 0.25, 0.5, 1, 2;
  the generators are trained once per seed and reused across ratios.

Each writes a table (accuracy, and HF-GAN's paired differences to FedAvg and to the null-image
control) and a figure of accuracy against the varied setting. Tuning: the point with the headline
table's settings (alpha = 0.5; the profile's ratio) runs first and tunes every method on the first
seed's validation split as the tables do; every other point holds those choices (one protocol for
every method and setting, as NIID-Bench holds one learning rate, batch size and local epochs
across its partitions; tuning again per point would cost each method its whole grid per point).
A sweep without the headline's settings holds its first point's. With ``resume``, the headline
point starts from the headline run's finished units in <out>/<dataset> when their stamp
(settings, profile, data, code) is the same, and the ratio sweep from its finished HF-GAN runs:
the same numbers, not made twice.

    python -m hfgan_core noniid --dataset pneumoniamnist --profile paper --out results
    python -m hfgan_core ratio --dataset pneumoniamnist --profile paper --out results
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .benchmark import (METHODS, PROFILES, BenchmarkConfig, add_paired_deltas, jsonable, load_runs, run_benchmark,
                        run_profile, summarise)
from .benchmark import runner
from .benchmark.tables import delta_cell, paired_columns
from .stats import few_seeds_note

SETTINGS = (("dirichlet", 0.1), ("dirichlet", 0.5), ("dirichlet", 1.0), ("iid", None))
NONIID_METHODS = ["fedavg", "fedavg_null", "hfgan", "centralized"]
RATIOS = (0.25, 0.5, 1.0, 2.0)
RATIO_METHODS = ["fedavg", "fedavg_steps", "fedavg_null", "hfgan"]
HFGAN_ROWS = [m for m, spec in METHODS.items() if spec.gan == "hfgan"]


def setting_label(scheme: str, alpha: float | None) -> str:
    return "IID" if scheme == "iid" else f"α = {alpha:g}"


def run_noniid(dataset: str, out: str | Path, *, profile: str = "quick", seeds: list[int] = (0, 1, 2),
               epsilon: float = 10.0, data_dir: str | None = None, device: str = "cpu",
               settings=SETTINGS, progress: bool = False, resume: bool = False, workers: int = 1) -> list[dict]:
    """One benchmark per setting under <out>/<dataset>/noniid/<setting>; writes noniid.json and
    noniid.md beside them and returns the rows. ``resume``: each benchmark continues (``units``);
    ``workers``: each makes its rows in that many processes (``benchmark.jobs``)."""
    points = [("iid" if scheme == "iid" else f"alpha{alpha:g}",
               {"setting": setting_label(scheme, alpha), "partition": scheme, "alpha": alpha},
               {"partition": scheme, "alpha": alpha or 0.5}) for scheme, alpha in settings]
    note = (f"HF-GAN at ε = {epsilon:g} per record of one hospital; Dirichlet label skew over 5 hospitals (smaller "
            "α: more different hospitals) and an IID split.")
    return _sweep(Path(out) / dataset / "noniid", "noniid", points, NONIID_METHODS,
                  f"### {dataset}: test accuracy as hospitals differ", note,
                  dict(dataset=dataset, profile=profile, seeds=list(seeds), epsilons=[epsilon], data_dir=data_dir,
                       device=device), progress, resume, workers)


def run_ratio(dataset: str, out: str | Path, *, profile: str = "quick", seeds: list[int] = (0, 1, 2),
              epsilon: float = 10.0, data_dir: str | None = None, device: str = "cpu", ratios=RATIOS,
              progress: bool = False, resume: bool = False, workers: int = 1) -> list[dict]:
    """One benchmark per synthetic ratio under <out>/<dataset>/ratio/<ratio>, all reading the
    HF-GAN runs of <out>/<dataset>/ratio/gan_runs (trained by the first ratio, reused after)."""
    root = Path(out) / dataset / "ratio"
    # the headline's ratio runs with the headline's settings (synthetic_ratio None), so its units can be reused
    own = PROFILES[profile].synthetic_ratio if profile in PROFILES else None  # (an unknown profile: refused below)
    points = [(f"ratio{ratio:g}", {"setting": f"{ratio:g}", "ratio": ratio},
               {"synthetic_ratio": None if ratio == own else ratio}) for ratio in ratios]
    if resume:
        _seed_gan_runs(Path(out) / dataset / "gan_runs", root / "gan_runs")
    note = (f"HF-GAN at ε = {epsilon:g} (one GAN per seed, shared by every ratio); each column adds that many "
            "synthetic (or null) images per real image, and FedAvg with as many steps takes the same optimizer steps.")
    return _sweep(root, "ratio", points, RATIO_METHODS, f"### {dataset}: synthetic images per real image", note,
                  dict(dataset=dataset, profile=profile, seeds=list(seeds), epsilons=[epsilon], data_dir=data_dir,
                       device=device, gan_cache=str(root / "gan_runs")), progress, resume, workers)


def _sweep(root: Path, name: str, points: list[tuple[str, dict, dict]], methods: list[str], title: str, note: str,
           common: dict, progress: bool, resume: bool = False, workers: int = 1) -> list[dict]:
    """Run one benchmark per point (sub-folder, what its rows are labelled with, the BenchmarkConfig
    settings it varies) on ``common`` settings; write <name>.json and <name>.md under ``root``."""
    # the point with the headline's settings (else the first) runs first and tunes; the others hold its choices
    first = next((i for i, (_, _, varied) in enumerate(points) if _is_headline(varied)), 0)
    tuned = root / points[first][0] / "units" / "tuning.json"
    rows = {}
    for i in [first] + [i for i in range(len(points)) if i != first]:
        folder, labels, varied = points[i]
        sub = root / folder
        config = BenchmarkConfig(methods=methods, **common, **varied)
        held = i != first
        if held:
            if not resume:
                shutil.rmtree(sub, ignore_errors=True)  # a run without resume starts every point over
            _hold_tuning(tuned, points[first][1]["setting"], sub, config)
        elif resume:
            _seed_units(root.parent, sub, config)
        # a held point resumes from the stamp and tuning log that _hold_tuning gave it
        run_benchmark(config, sub, progress=progress, echo=progress, resume=resume or held, workers=workers)
        rows[i] = [row | labels for row in add_paired_deltas(summarise(load_runs(sub)["runs"], methods), sub)]
    rows = [row for i in range(len(points)) for row in rows[i]]  # in the sweep's order
    c = common
    (root / f"{name}.json").write_text(json.dumps(jsonable({"dataset": c["dataset"], "profile": c["profile"],
                                                            "seeds": c["seeds"], "epsilon": c["epsilons"][0],
                                                            "rows": rows}), indent=2))
    (root / f"{name}.md").write_text(
        sweep_markdown(rows, methods, title) + f"Mean ± sd over seeds {c['seeds']}, profile `{c['profile']}`, "
        + note + f" Tuning: every column holds the classifiers' choices made in column {points[first][1]['setting']} "
        f"(on seed {c['seeds'][0]}'s validation split). Δ: paired on seeds and test images, 95 % interval as in "
        "the tables (`stats.paired_delta`)" + few_seeds_note(len(c["seeds"])) + "\n")
    return rows


def _seed_units(headline: Path, sub: Path, config: BenchmarkConfig) -> None:
    """Start a sweep point that has not started from the headline run's finished units, when both
    carry the same stamp (settings, profile, data, code) and tuned on the same first seed:
    ``run_benchmark(resume=True)`` then reuses them as its own. Anything else is left alone."""
    stamp_file, tuning_file = headline / "units" / "stamp.json", headline / "units" / "tuning.json"
    if (sub / "units" / "stamp.json").exists() or not stamp_file.exists():
        return
    runner._check(config)
    prof = run_profile(config)
    if json.loads(stamp_file.read_text()) != jsonable(runner._stamp(config, prof, runner._load(config, prof))):
        return
    tuning = json.loads(tuning_file.read_text()) if tuning_file.exists() else {}
    if any(entry["seed"] != config.seeds[0] for entry in tuning.values()):  # the sweep tunes on its first seed
        return
    shutil.copytree(headline / "units", sub / "units", ignore=_without_lost_gans(headline, config))
    mine = {key: entry for key, entry in tuning.items() if key.split("|")[0] in config.methods}
    (sub / "units" / "tuning.json").write_text(json.dumps(mine))  # only the sweep's methods' choices


def _is_headline(varied: dict) -> bool:
    """Whether a point's varied settings are the headline tables' (BenchmarkConfig's defaults)."""
    return all(BenchmarkConfig.__dataclass_fields__[key].default == value for key, value in varied.items())


def _hold_tuning(tuned: Path, setting: str, sub: Path, config: BenchmarkConfig) -> None:
    """Start a sweep point at the tuning choices in ``tuned`` (made at ``setting``): its unit stamp
    and a tuning log whose entries are those choices, marked ``held_from``, so that the benchmark's
    ``Tuner`` takes them as its own and tries nothing. A point already started keeps its own."""
    if (sub / "units" / "stamp.json").exists():
        return
    runner._check(config)
    prof = run_profile(config)
    held = {key: entry | {"held_from": setting} for key, entry in json.loads(tuned.read_text()).items()
            if key.split("|")[0] in config.methods}
    (sub / "units").mkdir(parents=True)
    (sub / "units" / "stamp.json").write_text(json.dumps(jsonable(runner._stamp(config, prof, runner._load(config, prof)))))
    (sub / "units" / "tuning.json").write_text(json.dumps(held))


def _without_lost_gans(headline: Path, config: BenchmarkConfig):
    """What ``_seed_units`` leaves behind: the invocations, the tuning log (filtered apart) and, for a
    sweep whose points share one GAN cache (the ratio sweep), the units made from an HF-GAN whose
    generators are not on this machine (``*.pt`` are not committed): the cache trains that GAN again,
    and every ratio's rows must come from that one training, not the headline's old one."""
    def ignore(folder: str, names: list[str]) -> list[str]:
        skip = [n for n in names if n in ("invocations", "tuning.json")]
        if config.gan_cache:
            for n in names:  # row-<method>-<seed>-<eps>.json/.npy, quality-hfgan-<seed>-<eps>.json
                parts = Path(n).stem.split("-")
                made_by_hfgan = (parts[0] == "row" and parts[1] in HFGAN_ROWS) or parts[:2] == ["quality", "hfgan"]
                if made_by_hfgan and not (headline / "gan_runs" / f"hfgan-seed{parts[-2]}-eps{parts[-1]}"
                                          / "generators.pt").exists():
                    skip.append(n)
        return skip
    return ignore


def _seed_gan_runs(headline: Path, cache: Path) -> None:
    """Copy the headline run's finished HF-GAN runs into the ratio sweep's GAN cache; the benchmark
    reuses one only if its config, code and data are the very same (``train.trained_generators``)."""
    for run in sorted(headline.glob("hfgan-*")):
        if (run / "generators.pt").exists() and not (cache / run.name).exists():
            shutil.copytree(run, cache / run.name, ignore=shutil.ignore_patterns("checkpoint.pt"))


def sweep_markdown(rows: list[dict], methods: list[str], title: str) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        cells = []
        for s in settings:
            r = next((r for r in rows if r["setting"] == s and r["method"] == m), None)
            cells.append("—" if r is None or r["accuracy"] is None else
                         f"{r['accuracy']:.3f}" + (f" ± {r['accuracy_sd']:.3f}" if r["accuracy_sd"] is not None else ""))
        lines.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
    for key, _, name in paired_columns():
        cells = [delta_cell(next((r for r in rows if r["setting"] == s and r["method"] == "hfgan"), None), key)
                 for s in settings]
        lines.append(f"| Δ {name} [95 % CI] | " + " | ".join(cells) + " |")
    return f"{title}\n\n" + "\n".join(lines) + "\n\n"


def plot_sweep(rows: list[dict], path: str | Path, *, methods: list[str], xlabel: str, title: str = ""):
    """Accuracy (mean ± sd over seeds) against the varied setting, one line per method."""
    import matplotlib.pyplot as plt
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for m in methods:
        rs = [next((r for r in rows if r["setting"] == s and r["method"] == m), None) for s in settings]
        mean = [np.nan if r is None else r["accuracy"] for r in rs]
        sd = [0.0 if r is None or r["accuracy_sd"] is None else r["accuracy_sd"] for r in rs]
        ax.errorbar(range(len(settings)), mean, yerr=sd, marker="o", capsize=3, label=METHODS[m].label)
    ax.set_xticks(range(len(settings)), settings)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig
