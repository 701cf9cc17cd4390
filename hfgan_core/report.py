"""The three results tables: table files, figures, the notebook runner behind ``make tables``,
and ``results/README.md``.

    python -m hfgan_core tables --profile quick          # what `make tables` runs

Each dataset notebook runs the benchmark for its dataset, then calls ``write_table`` and the
``plot_*`` functions; ``make_tables`` executes those notebooks with papermill and
``write_readme`` gathers what they wrote.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .benchmark import CURVE_METHODS, METHODS, PRIVATE_ROWS, PROFILES, add_paired_deltas, jsonable, load_runs, \
    summarise, table_csv, table_markdown, wall_time_s
from .data import load_dataset
from .device import require_device
from .errors import UserError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass(frozen=True)
class Table:
    dataset: str
    stem: str  # results/<stem>.{md,csv,json} and results/figures/<stem>_*.png
    notebook: str
    title: str


TABLES = {t.dataset: t for t in [
    Table("pneumoniamnist", "table1_chest_xray", "01_chest_xray.ipynb", "Table 1: chest X-ray (PneumoniaMNIST)"),
    Table("brainmri", "table2_brain_mri", "02_brain_mri.ipynb", "Table 2: brain MRI (4 tumour classes)"),
    Table("retinamnist", "table3_retinal_fundus", "03_retinal_fundus.ipynb", "Table 3: retinal fundus (RetinaMNIST)")]}
FIGURES = ("samples", "privacy_utility", "per_hospital", "validation_curves")
# Table 4 attacks the chest X-ray runs; it runs whenever the chest X-ray data is there (attacks=False skips it)
ATTACK_TABLE = Table("pneumoniamnist", "table4_privacy_attacks", "04_privacy_attacks.ipynb",
                     "Table 4: privacy attacks and audit (chest X-ray)")


def default_out(profile: str) -> Path:
    """Where a profile's tables go when no folder is named: only the paper profile writes the
    committed tables in results/; smoke and quick go to results/<profile>/, so that a preview run
    in a class never overwrites them."""
    return Path("results") if profile == "paper" else Path("results") / profile


def figure_path(out_dir: str | Path, dataset: str, kind: str) -> Path:
    return Path(out_dir) / "figures" / f"{TABLES[dataset].stem}_{kind}.png"


# ---------------------------------------------------------------------------------------------
# What a notebook writes

def write_table(bench_dir: str | Path, out_dir: str | Path) -> list[dict]:
    """results/<stem>.md, .csv and .json, rendered from the benchmark's runs.json; returns the rows."""
    report = load_runs(bench_dir)
    t = TABLES[report["dataset"].removesuffix("_64")]
    rows = add_paired_deltas(summarise(report["runs"], report["config"]["methods"]), bench_dir)  # the Δ columns
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{t.stem}.md").write_text(f"### {t.title}\n\n" + table_markdown(rows, report))
    (out / f"{t.stem}.csv").write_text(table_csv(rows))
    meta = {k: report[k] for k in ("dataset", "image_size", "config", "profile", "extractor", "reference",
                                   "provenance")} | {"wall_time_s": wall_time_s(report)}
    (out / f"{t.stem}.json").write_text(json.dumps(jsonable({"title": t.title, **meta, "rows": rows}), indent=2))
    return rows


def plot_samples(bench_dir: str | Path, path: str | Path, *, data_dir: str | None = None, per_class: int = 8):
    """Real validation images beside every hospital's generator (first seed, the table's epsilon),
    one row per class. The generators' grids are the PNGs the training run saved."""
    import matplotlib.pyplot as plt
    import torch
    from torchvision.utils import make_grid
    report = load_runs(bench_dir)
    seed, eps = report["config"]["seeds"][0], float(report["config"]["epsilons"][0])
    run_dir = Path(bench_dir) / "gan_runs" / f"hfgan-seed{seed}-eps{eps}"
    ds = load_dataset(report["dataset"], data_dir)
    x, y = ds.val.tensors()
    blank = -torch.ones(1, *x.shape[1:])
    real = torch.cat([torch.cat([x[y == c][:per_class], *[blank] * max(0, per_class - int((y == c).sum()))])
                      for c in range(ds.num_classes)])  # (K * per_class, C, H, W)
    grids = [("real (validation split)", make_grid(real, nrow=per_class, normalize=True, value_range=(-1, 1))
              .permute(1, 2, 0).numpy())]
    hospitals = report["hospitals"][str(seed)]
    has_mix = "dp_class_mix" in hospitals  # runs redacted before the DP mix existed carry sizes only
    mixes = hospitals["dp_class_mix"] if has_mix else [None] * len(hospitals["sizes"])
    for i, (n, mix) in enumerate(zip(hospitals["sizes"], mixes)):
        grids.append((f"G_{i} of hospital {i}\n(N = {n}" + (f"; DP mix {_mix_label(mix)})" if has_mix else ")"),
                      plt.imread(run_dir / f"samples_client{i}.png")))
    fig, axes = plt.subplots(1, len(grids), figsize=(2.3 * len(grids), 0.3 * ds.num_classes + 1.2),
                             layout="constrained")
    for ax, (title, img) in zip(axes, grids):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    size = ds.image_size
    axes[0].set_yticks([2 + c * (size + 2) + size / 2 for c in range(ds.num_classes)], ds.class_names, fontsize=7)
    fig.suptitle(f"{report['dataset']}: HF-GAN samples at ε = {_eps_label(eps)} (seed {seed}; rows = classes, "
                 "hospital sizes" + (" and DP class mixes)" if has_mix else ")"), fontsize=9)
    return _save(fig, path)


def plot_privacy_utility(rows: list[dict], path: str | Path, *, title: str = ""):
    """Accuracy, macro-F1 and FID against epsilon for the curve's methods; non-private FedAvg
    and centralized training as reference lines. Error bars: sample sd over seeds."""
    import matplotlib.pyplot as plt
    finite = sorted({r["epsilon_target"] for r in rows if r["method"] in CURVE_METHODS
                     and math.isfinite(r["epsilon_target"])})
    if not finite:
        raise UserError("the privacy-utility curve needs at least one finite epsilon in the table")
    inf_at = finite[-1] * 3  # where "no DP" sits on the log axis

    def xs(rs):
        return [r["epsilon_target"] if math.isfinite(r["epsilon_target"]) else inf_at for r in rs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for ax, metric in zip(axes, ("accuracy", "macro_f1", "fid")):
        for method in CURVE_METHODS:
            rs = [r for r in rows if r["method"] == method and r[metric] is not None]
            if rs and not (metric == "fid" and method == "hfgan_synth_only"):  # the same generators as "hfgan"
                ax.errorbar(xs(rs), [r[metric] for r in rs], yerr=[r[f"{metric}_sd"] or 0 for r in rs],
                            marker="o", capsize=3, label=METHODS[method].label if metric != "fid" else "HF-GAN")
        for method, style in (("fedavg", "--"), ("centralized", ":")):
            ref = [r for r in rows if r["method"] == method]
            if ref and metric != "fid":
                ax.axhline(ref[0][metric], color="gray", ls=style, label=f"{METHODS[method].label} (ε = ∞)")
        ax.set_xscale("log")
        ax.set_xticks(finite + [inf_at], [f"{e:g}" for e in finite] + ["∞"])
        ax.minorticks_off()
        ax.set_xlabel("ε per record (δ = 1e-5)")
        ax.set_ylabel({"accuracy": "test accuracy", "macro_f1": "test macro-F1",
                       "fid": "FID (in-domain extractor, lower is better)"}[metric])
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "privacy–utility", fontsize=10)
    return _save(fig, path)


def _mix_label(mix: list[float]) -> str:
    """A DP class mix as percentages, e.g. '62/38 %'."""
    return "/".join(f"{100 * m:.0f}" for m in mix) + " %"


def plot_per_hospital(bench_dir: str | Path, path: str | Path,
                      methods: tuple[str, ...] = ("local", "fedavg", "hfgan", "hfgan_synth_only", "centralized")):
    """Test accuracy on each hospital's class mix (first seed, the table's epsilon): who gains
    from federation and from synthetic images. "Local only" is each hospital's own model."""
    import matplotlib.pyplot as plt
    report = load_runs(bench_dir)
    seed, eps = report["config"]["seeds"][0], float(report["config"]["epsilons"][0])
    hospitals = report["hospitals"][str(seed)]  # public sizes and DP class mixes
    where = np.arange(len(hospitals["sizes"]))
    chosen = [m for m in methods if m in report["config"]["methods"]]
    fig, ax = plt.subplots(figsize=(1.6 * len(where) + 3, 3.4), layout="constrained")
    width = 0.8 / len(chosen)
    for j, method in enumerate(chosen):
        want = eps if method in PRIVATE_ROWS else math.inf
        run = next(r for r in report["runs"] if r["method"] == method and r["seed"] == seed and r["epsilon"] == want)
        ax.bar(where + (j - (len(chosen) - 1) / 2) * width, run["per_hospital_accuracy"], width,
               label=("Local only (the hospital's own model)" if method == "local" else METHODS[method].label)
               + (f" (ε = {_eps_label(eps)})" if method in PRIVATE_ROWS else ""))
    ax.set_xticks(where, [f"hospital {i}\nN = {n}\n{_mix_label(mix)}"
                          for i, (n, mix) in enumerate(zip(hospitals["sizes"], hospitals["dp_class_mix"]))], fontsize=7)
    ax.set_ylabel("accuracy on the hospital's class mix")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{report['dataset']}: per-hospital test accuracy (seed {seed}; size and DP class mix under each hospital)",
                 fontsize=9)
    return _save(fig, path)


def plot_validation_curves(bench_dir: str | Path, path: str | Path):
    """Each row's validation macro-AUC by federated round (first seed; the private rows at the
    table's epsilon): where patience stopped it and, as a dot, the round it kept. The curves of
    every seed are in runs.json ("classifier": "val_auc")."""
    import matplotlib.pyplot as plt
    report = load_runs(bench_dir)
    seed, eps = report["config"]["seeds"][0], float(report["config"]["epsilons"][0])
    runs = [r for r in report["runs"] if r["seed"] == seed and r["epsilon"] == (eps if r["method"] in PRIVATE_ROWS
                                                                              else math.inf)]
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(runs):
        c, style = r["classifier"], dict(color=colors[i % 10], ls="-" if i < 10 else "--")
        for j, (curve, best) in enumerate(zip(c["val_auc"], c["best_round"])):  # "local only": one per hospital
            ax.plot(np.arange(1, len(curve) + 1), curve, lw=0.8 if len(c["val_auc"]) > 1 else 1.5,
                    label=(METHODS[r["method"]].label if len(c["val_auc"]) == 1 else
                           f"{METHODS[r['method']].label}: one thin line per hospital")
                    if j == 0 else None, **style)
            ax.plot(best, curve[best - 1], "o", color=style["color"], ms=4)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("federated round")
    ax.set_ylabel("validation macro-AUC")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{report['dataset']}: validation curves (seed {seed}; private rows at ε = {_eps_label(eps)}; "
                 "dot: the round kept)", fontsize=9)
    return _save(fig, path)


def _eps_label(eps: float) -> str:
    return "∞" if math.isinf(eps) else f"{eps:g}"


def _save(fig, path: str | Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


# ---------------------------------------------------------------------------------------------
# make tables: run the notebooks, then results/README.md

def make_tables(*, profile: str = "auto", device: str = "auto", datasets: list[str] | None = None,
                out: str | Path | None = None, data_dir: str | None = None, jobs: int = 1, workers: int = 1,
                parameters: dict | None = None, attacks: bool = True, download: bool = True) -> int:
    """Execute each dataset notebook (papermill), and notebook 04 (table 4, the attacks on the
    chest X-ray runs) when chest X-ray is among them, then rebuild results/README.md. A missing
    MedMNIST file is fetched (``download``: through the medmnist package, verified); any other
    missing or unreadable file is skipped with how to get it (brain MRI: the one-time build), and
    the others still run.
    ``jobs`` notebooks run side by side, each making its rows in ``workers`` processes (the cores
    shared out as torch threads). ``parameters`` overrides more notebook parameters (e.g. seeds).
    Returns 0, or 1 if a notebook failed."""
    profile, device = resolve_auto(profile, device)
    datasets = _check_tables(profile, datasets, jobs, workers)
    require_device(device)
    out = Path(out or default_out(profile)).resolve()
    ready, missing = [], {}
    for name in datasets:
        try:
            load_dataset(name, data_dir, download=download)
            ready.append(TABLES[name])
        except UserError as exc:
            missing[TABLES[name].stem] = str(exc)
    if not ready:  # nothing to do: one line, and results/README.md left as it was
        raise UserError("no table can run: " + " | ".join(f"{stem}: {why}" for stem, why in missing.items()))
    for stem, why in missing.items():
        print(f"skipping {stem}: {why}", file=sys.stderr, flush=True)
    status = {stem: f"not run: {why}" for stem, why in missing.items()}
    if attacks and TABLES[ATTACK_TABLE.dataset] in ready:
        ready.append(ATTACK_TABLE)
    threads = max(1, (os.cpu_count() or 1) // (jobs * workers)) if jobs * workers > 1 else None
    params = {"profile": profile, "device": device, "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
              "out_dir": str(out), "threads": threads, "workers": workers} | (parameters or {})
    started = time.time()

    def run(i_t: tuple[int, Table]) -> tuple[str, str]:
        i, t = i_t
        sys.stdout.write(f"[{i + 1}/{len(ready)}] notebooks/{t.notebook} (profile {profile}, {device}) -> "
                         f"{out / 'notebooks' / t.notebook}\n")  # one write: lines of side-by-side jobs stay whole
        sys.stdout.flush()
        return t.stem, _execute(t, params, out, progress_bar=jobs == 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        status |= dict(pool.map(run, enumerate(ready)))
    run_line = (f"`make tables` with profile `{profile}`, device `{device}`, {jobs} notebook(s) at a time"
                + (f", {workers} worker processes each" if workers > 1 else "")
                + (f" ({threads} torch thread(s) each)" if threads else "")
                + f"; finished {time.strftime('%Y-%m-%d %H:%M %Z')} after {(time.time() - started) / 60:.1f} min.")
    readme = write_readme(out, status, run_line)
    failed = [n for n, s in status.items() if s.startswith("failed")]
    skipped = sum(s.startswith("not run") for s in status.values())
    print(f"{len(ready) - len(failed)} of {len(ready) + skipped} tables written; {readme}", flush=True)
    return 1 if failed else 0


def auto_device(device: str) -> str:
    """``auto``: cuda when a CUDA GPU is present, else cpu; any other value as given."""
    import torch
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def resolve_auto(profile: str, device: str) -> tuple[str, str]:
    """``auto``: the paper profile on a CUDA GPU (it fits there), the quick preview on a CPU."""
    import torch
    gpu = torch.cuda.is_available()
    device = auto_device(device)
    if profile == "auto":
        profile = "paper" if device.startswith("cuda") and gpu else "quick"
        print(f"profile auto: {profile} on {device} ({'a CUDA GPU is present' if gpu else 'no CUDA GPU'})", flush=True)
    return profile, device


def _check_tables(profile: str, datasets: list[str] | None, jobs: int, workers: int = 1) -> list[str]:
    if profile not in PROFILES:
        raise UserError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    datasets = datasets or list(TABLES)
    unknown = [d for d in datasets if d not in TABLES]
    if unknown:
        raise UserError(f"no table for dataset(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {jobs})")
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    return datasets


def _execute(t: Table, params: dict, out: Path, *, progress_bar: bool) -> str:
    """Run one notebook; its printed lines stream to this terminal. Returns a status line."""
    import papermill as pm
    started = time.time()
    target = out / "notebooks" / t.notebook
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(NOTEBOOKS / t.notebook), str(target), parameters=params, kernel_name="python3",
                            cwd=str(NOTEBOOKS.parent), progress_bar=progress_bar, stdout_file=sys.stdout,
                            stderr_file=sys.stderr)
    except pm.PapermillExecutionError as exc:
        line = f"failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''}"
        print(f"{t.stem} {line} (executed notebook: {target})", file=sys.stderr, flush=True)
        return line
    return f"ran in {(time.time() - started) / 60:.1f} min"


def write_readme(out: str | Path, status: dict[str, str] | None = None, run_line: str = "") -> Path:
    """results/README.md from the table files on disk: each table with its footnotes and figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    status = status or {}
    parts = ["# Results\n", "Written by `make tables` (`python -m hfgan_core tables`); do not edit by hand. Each "
             "table comes from its notebook's executed copy in `notebooks/`; its footnotes give the profile, seeds, "
             "privacy unit, δ, extractor, hardware, wall time and git commit of the run that made it.\n"]
    if run_line:
        parts.append(f"Last run: {run_line}\n")
    for t in [*TABLES.values(), ATTACK_TABLE]:
        md = out / f"{t.stem}.md"
        parts.append(f"## {t.title}\n")
        if t.stem in status:
            parts.append(f"Last `make tables`: {status[t.stem]}.\n")
        if not md.exists():
            parts.append("No table yet.\n")
            continue
        parts.append(f"Executed notebook: [`notebooks/{t.notebook}`](notebooks/{t.notebook}).\n")
        parts.append(md.read_text().split("\n", 2)[2])  # the table without its heading
        figures = ([f"figures/{t.stem}_inversion.png"] if t is ATTACK_TABLE else
                   [f"figures/{figure_path(out, t.dataset, kind).name}" for kind in FIGURES])
        parts += [f"![{Path(f).stem}]({f})\n" for f in figures if (out / f).exists()]
    path = out / "README.md"
    path.write_text("\n".join(parts))
    return path
