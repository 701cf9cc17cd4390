"""The tables, rendered from runs.json alone: mean ± sd over seeds, paired differences, footnotes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import metrics
from ..stats import few_seeds_note
from .config import CURVE_METHODS, GAN_LABELS, METHODS, PRIVATE_ROWS
from .units import elapsed_s


def load_runs(out: str | Path) -> dict:
    """runs.json with its "inf" strings turned back into floats."""
    report = json.loads((Path(out) / "runs.json").read_text())
    report["runs"] = [{k: _number(v) for k, v in r.items()} for r in report["runs"]]
    for key in ("epsilons", "curve_epsilons"):
        report["config"][key] = [_number(v) for v in report["config"].get(key, [])]
    _count_one_class_models(report["runs"], Path(out) / "probas.npz")
    return report


def _count_one_class_models(runs: list[dict], path: Path) -> None:
    """Runs from before ``one_class_models`` was kept: count it from their saved test probabilities
    (models whose predictions take one class), where probas.npz has them."""
    if not path.exists() or all("one_class_models" in r for r in runs):
        return
    saved = np.load(path)
    for r in runs:
        probas = probas_by_seed(saved, r["method"], float(r["epsilon"])).get(int(r["seed"]))  # (M, N, K)
        if "one_class_models" not in r and probas is not None:
            r["one_class_models"] = int(sum(metrics.classification_metrics(saved["y_test"], p)["predicted_classes"] <= 1
                                            for p in probas))  # as the runner counts them


def _number(v):
    return float(v) if v in ("inf", "-inf", "nan") else v


def write_tables(out: str | Path) -> list[dict]:
    """table.csv and table.md, rendered from runs.json alone; returns the rows."""
    report = load_runs(out)
    rows = add_paired_deltas(summarise(report["runs"], report["config"]["methods"]), out)
    Path(out, "table.csv").write_text(table_csv(rows))
    Path(out, "table.md").write_text(table_markdown(rows, report))
    return rows



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
                   "one_class_runs": sum(_collapsed(r) for r in runs)}
            for m in METRICS:
                values = [r[m] for r in runs if r.get(m) is not None]
                row[m] = float(np.mean(values)) if values else None
                row[f"{m}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None  # sample sd
            rows.append(row)
    return rows


def _collapsed(run: dict) -> bool:
    """Whether a seed's classifier (for "local only": any of its hospitals' models) predicts one class.
    Runs from before ``one_class_models`` was kept have only the mean number of predicted classes over
    their models: below 2 means at least one model predicts one class (a lower bound for local only)."""
    if "one_class_models" in run:
        return run["one_class_models"] > 0
    return run.get("predicted_classes", 2) < 2


def probas_by_seed(saved, method: str, eps: float) -> dict[int, np.ndarray]:
    """One row's saved test probabilities (models, N, K) per seed, from probas.npz ("method|seed|eps")."""
    return {int(k.split("|")[1]): saved[k] for k in saved.files
            if k.split("|")[0] == method and float(k.split("|")[2]) == eps}


def accuracy(labels: np.ndarray, p: np.ndarray) -> float:
    """Test accuracy, mean over the row's models: a ``stats.paired_delta`` score."""
    return float(np.mean(p.argmax(-1) == labels))


def balanced_accuracy(labels: np.ndarray, p: np.ndarray) -> float:
    """Test balanced accuracy, mean over the row's models: a ``stats.paired_delta`` score that a
    classifier cannot raise by predicting the majority class."""
    return metrics.balanced_accuracy(labels, p.argmax(-1))  # p: (models, N, K)


# The paired differences every row gets: each score (its key prefix, short and long name) against
# each base row (its key suffix and name); the keys are <prefix>_<suffix>, e.g. bal_delta_vs_null.
PAIRED = ((accuracy, "delta_vs", "acc.", "accuracy"), (balanced_accuracy, "bal_delta_vs", "bal. acc.", "balanced accuracy"))
BASES = (("fedavg", "fedavg", "FedAvg"), ("fedavg_null", "null", "null images"))


def paired_columns() -> list[tuple[str, str, str]]:
    """(key, table header, sweep label) of every Δ column, in the tables' order."""
    return [(f"{prefix}_{suffix}", f"Δ {short} vs {base} [95 % CI]", f"{long}, HF-GAN − {base}")
            for _, prefix, short, long in PAIRED for _, suffix, base in BASES]


def delta_cell(row: dict, key: str) -> str:
    """A paired difference and its 95 % interval, or — where the row has none."""
    if row is None or row.get(key) is None:
        return "—"
    return f"{row[key]:+.3f} [{row[key + '_low']:+.3f}, {row[key + '_high']:+.3f}]"


def add_paired_deltas(rows: list[dict], out: str | Path, *, n_boot: int = 1000) -> list[dict]:
    """Each row's accuracy and balanced accuracy minus FedAvg's (and minus the null-image
    control's), paired on seeds and test images, with a 95 % interval (``stats.paired_delta``),
    from <out>/probas.npz."""
    from ..stats import paired_delta
    path = Path(out) / "probas.npz"
    if not path.exists():
        return rows
    saved = np.load(path)
    y = saved["y_test"]
    for row in rows:
        mine = probas_by_seed(saved, row["method"], row["epsilon_target"])
        for base, suffix, _ in BASES:
            theirs = probas_by_seed(saved, base, math.inf)
            seeds = sorted(set(mine) & set(theirs))
            for score, prefix, *_ in PAIRED:
                key = f"{prefix}_{suffix}"
                d = (None if row["method"] == base or not seeds else
                     paired_delta(y, [mine[s] for s in seeds], [theirs[s] for s in seeds], score=score, n_boot=n_boot))
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
    deltas = paired_columns() if paired else []
    head = ("| method | ε target | GAN ε (unit) | classifier DP | ε of released classifier | accuracy | balanced acc. "
            "| macro-F1 | AUC |" + "".join(f" {header} |" for _, header, _ in deltas)
            + " IS | FID |" + (" IS (Inception-v3) | FID (Inception-v3) |" if standard else ""))
    lines = [head, "|" + " --- |" * (11 + len(deltas) + 2 * standard)]
    for r in rows:
        def cell(m: str) -> str:
            if r[m] is None:
                return "—"
            return f"{r[m]:.3f}" + (f" ± {r[m + '_sd']:.3f}" if r[m + "_sd"] is not None else "")
        one_class = f" †{r['one_class_runs']}" if r.get("one_class_runs") else ""
        gan = "—" if r["gan_epsilon"] is None else _eps(r["gan_epsilon"]) + (f" ({r['unit']})" if r["unit"] else "")
        target = _eps(r["epsilon_target"]) if r["method"] in PRIVATE_ROWS else "—"
        # a DP classifier is private at its round cap's epsilon (sigma calibrated for it); early stopping is
        # post-processing, and the epsilon its steps spent (runs.json) is no guarantee
        released = f"≤ {target} (cap)" if r["classifier_dp"] else _eps(r["released_epsilon"])
        lines.append(f"| {r['label']} | {target} | {gan} | {'yes' if r['classifier_dp'] else 'no'} | "
                     f"{released} | {cell('accuracy')}{one_class} | {cell('balanced_accuracy')} | "
                     f"{cell('macro_f1')} | {cell('auc')} |"
                     + "".join(f" {delta_cell(r, key)} |" for key, _, _ in deltas)
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
        + (" **A preview**: the quick profile trains each HF-GAN for "
           f"{report['profile'].get('gan_scale', 1):g} of the recipe's rounds and stops every classifier after "
           f"{report['profile'].get('fed', {}).get('rounds', '?')} rounds, before either has converged; the `paper` "
           "profile trains the full recipe and every classifier until validation stops improving."
           if report["profile"]["name"] == "quick" else "")
        + _curve_note(report),
        _tuning_note(report),
        "Balanced accuracy: mean recall over classes. † n: in n of the seeds the classifier (local only: any "
        "hospital's model) predicts one class only (its accuracy is then the class prior). Δ: the row's test "
        "accuracy (or balanced accuracy, which predicting the majority class cannot raise) minus FedAvg's (or "
        "minus FedAvg + null images': untrained generators, the same balanced labels and ratio), paired on seeds "
        "and test images, mean over seeds with a 95 % interval: mean ± t × √(seed part + test-set part), the seed "
        "part the variance of the per-seed differences over the number of seeds, the test-set part the variance "
        "over 1,000 resamples of the test images, each shared by every seed since every seed is scored on the same "
        "images; t with Welch–Satterthwaite degrees of freedom (`stats.paired_delta`)."
        + (" With one seed the interval has the test-set part only: it shows no seed-to-seed variation."
           if len(c["seeds"]) == 1 else few_seeds_note(len(c["seeds"]))),
        f"ε: per record of one hospital (unit 'record': add/remove one record, the hospital's size public) or per "
        f"whole hospital ('hospital', DP-FedAvg-GAN), δ = {c['delta']}, Opacus "
        f"{report['profile'].get('accountant', 'prv').upper()} accountant, max over hospitals. HF-GAN's noise is "
        "added on each hospital; DP-FedAvg-GAN's is central DP (a trusted server noises the sum of clipped "
        "updates: against the server itself there is no guarantee). Only rows whose classifier is DP or trained "
        "on DP synthetic images alone release a private classifier; the others train on real images without DP "
        "(ε = ∞). The DP classifier is private at the ε of its round cap, for which σ was calibrated; it stops "
        "early on validation (post-processing), and the smaller ε its steps spent (runs.json) is not a guarantee. "
        "The benchmark is a simulation: every noise draw derives from the seed, so these ε assume a trusted "
        "simulator. Evaluation (IS, FID, the generator-quality judgement, the extractor) is the simulator's and "
        "outside ε.",
        f"IS and FID: in-domain extractor `{ex['name']}` (SmallCNN trained on the real training split only, "
        f"{ex['epochs']} epochs; its test accuracy {ex['test_accuracy']:.3f}), not comparable to published FIDs"
        + ("; Inception-v3 columns: torchmetrics with the standard FID weights, images upscaled to 299 px"
           if any("fid_inception" in r for r in report["runs"]) else " (no Inception-v3 weights given: "
           "set HFGAN_INCEPTION_WEIGHTS for standard FID/IS)") + ". FID between generated images with the test split's labels and the real test images "
        f"({n_fid[0] if n_fid else '?'} vs {n_fid[1] if n_fid else '?'} images). Real-image reference: "
        f"FID(val, test) = {ref['fid_val_vs_test']:.3f}, IS(test) = {ref['inception_score_test']:.3f}.",
        f"Hardware: {prov['hardware']}; total wall time {wall_time_s(report) / 60:.1f} min"
        + _invocations_note(report) + f"; git {prov['git_sha']}" + (f" ({prov['note']})." if prov.get("note") else ".")])


def wall_time_s(report: dict) -> float:
    """From the first invocation's start to the last one's end, time with none running left out and
    invocations side by side counted once (runs.json written before this took their sum)."""
    calls = [c for c in report.get("invocations", []) if not c.get("worker")]
    return elapsed_s(calls) if calls else report["wall_time_s"]


def _invocations_note(report: dict) -> str:
    """A resumed run says over how many invocations (and machines) its results were made; a parallel
    one, how many jobs its worker processes ran and their summed time."""
    every = report.get("invocations", [])
    calls = [c for c in every if not c.get("worker")]
    jobs = len(every) - len(calls)
    hardware = sorted({c["hardware"] for c in calls})
    note = "" if len(calls) < 2 else (
        f" over {len(calls)} invocations (`--resume`; every result reused only with the same settings, data and "
        f"code{'' if len(hardware) == 1 else '; hardware: ' + ' / '.join(hardware)})")
    if jobs:
        note += (f"; its rows made by {jobs} jobs in worker processes (`--workers`), "
                 f"{report.get('worker_time_s', 0) / 60:.1f} min of their time summed")
    return note


def _tuning_note(report: dict) -> str:
    k = report["profile"].get("tune", 1)
    if k <= 1:
        return ("Hyper-parameters: not tuned; every classifier uses the profile's default point (the `paper` "
                "profile tunes every method with the same budget).")
    tuning = report.get("tuning", {})
    seeds = sorted({t["seed"] for t in tuning.values()})
    if any("inherited" in t for t in tuning.values()):  # the protocol since FedProx & co. start from FedAvg's point
        grids = ("FedAvg and every other method: learning rate × local epochs; FedProx and augmentation: FedAvg's "
                 "chosen point, then μ over decades or the augmentation strength; the equal-steps control: HF-GAN's "
                 "local epochs (as many optimizer steps per round as HF-GAN's row at the headline ε; every row stops "
                 "on its own validation curve, so the totals differ: runs.json `optimizer_steps`), then the learning "
                 "rate; DP-SGD and its clipping-only control: the same draw of batch "
                 "size, clipping norm, learning rate and round cap")
    else:
        grids = ("learning rate and local epochs for all; FedProx's μ over decades; augmentation strength; DP-SGD's "
                 "batch size, clipping norm, learning rate and round cap")
    fresh = any("trial_seed" in t for t in tuning.values())
    return (f"Hyper-parameters: every method tried at most {k} configurations of its own grid ({grids}; the whole "
            f"grid where it has fewer points), chosen by validation macro-AUC on seed(s) {seeds} and used for every "
            "seed; runs.json `tuning` holds each grid, every point tried and the choice."
            + (" The trials train with a classifier seed no row uses, and the tuning seed's row is a fresh run at "
               "the chosen point (a trial's own run would keep the luck of the initialisation that made it win)."
               if fresh else "")
            + edge_note(tuning)
            + " The GANs' settings are not in this budget: HF-GAN's recipe was "
            "chosen earlier on validation (`results/recipe_search/`: about 80 recorded runs, most on seed 0), DP-FedAvg-GAN's "
            "settings were not searched. Tuning on validation is not charged to any ε (for a fixed number of "
            "configurations the honest cost would be composition over their runs).")


def edge_choices(tuning: dict) -> list[str]:
    """Chosen values at the end of a numeric grid axis of three or more values ("method|eps" keys):
    the best value may lie beyond the grid, so such a row may be under-tuned. Two-value axes (local
    epochs 1 or 2) are left out: every choice on them is an end."""
    found = []
    for key, t in tuning.items():
        method, eps = key.split("|")
        for axis, values in t.get("space", {}).items():
            nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            v = t.get("chosen", {}).get(axis)
            if len(nums) < 3 or len(nums) != len(values) or v not in (min(nums), max(nums)):
                continue
            label = METHODS[method].label if method in METHODS else method
            where = "" if math.isinf(float(eps)) else f" at ε = {float(eps):g}"
            found.append(f"{label}{where}: {axis} = {v:g}, the {'largest' if v == max(nums) else 'smallest'} "
                         f"of {len(nums)}")
    return found


def edge_note(tuning: dict) -> str:
    found = edge_choices(tuning)
    return (" Chosen at an end of its grid (the best value may lie beyond it, so the row may be under-tuned; "
            "methods that share a grid share the limit): " + "; ".join(found) + "." if found else "")


def _curve_note(report: dict) -> str:
    curve = report["config"].get("curve_epsilons") or []
    if not curve:
        return ""
    n = report["profile"].get("curve_seeds")
    seeds = report["config"]["seeds"][:n] if n else report["config"]["seeds"]
    return (f" Rows at ε ∈ {{{', '.join(_eps(e) for e in curve)}}} are the privacy–utility curve: "
            f"{', '.join(METHODS[m].label for m in CURVE_METHODS)} only, seed(s) {seeds}"
            + (" (no ± sd from one seed)." if len(seeds) == 1 else "."))

