"""Table 4: every attack against the same HF-GAN training runs, over epsilon and seeds.

One run per (epsilon, seed): chest X-ray by default (``--dataset`` for another), 5 hospitals, Dirichlet 0.5, the DP recipe (5 D steps per
round, D's Adam momentum 0.9) at every epsilon, so that only the noise differs between rows; the
row "inf" is the clipping-only control (sigma = 0), which keeps every step of the mechanism except
the noise. Each run carries the audit's canaries (``audit.CanaryAudit``) from its first round.
After training, with the run's own final models:

(a) the audit: epsilon lower bound from the canaries, next to the epsilon the accountant claims;
(b) membership inference against D (LOGAN) and against the released synthetic images (GAN-Leaks):
    members are training records (as many as the validation split holds), non-members the
    validation split;
(c) gradient inversion: the server inverts the upload a batch of one image would produce at the
    hospital with the least noise (its own sigma), for a few of its images, against D as it was
    in round 1 (what every first upload is computed on, and what a malicious server could send
    again at any time) and against the final D.

    python -m hfgan_core attacks --profile paper --out results     # what notebook 04 runs
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import client as cl
from .. import engine
from ..benchmark import jsonable, provenance
from ..device import require_device
from ..data import MedicalDataset, load_dataset
from ..errors import UserError
from ..privacy import gaussian_noise_like
from ..synthesis import synthesize
from ..train import BudgetExhausted, TrainConfig, preflight, setup
from .audit import CanaryAudit
from .inversion import invert_upload, reconstruction_quality
from .membership import attack_summary, discriminator_membership_scores, generator_membership_scores

STEM = "table4_privacy_attacks"


@dataclass
class AttackProfile:
    rounds: int  # HF-GAN rounds, 5 D steps each
    canaries: int  # per hospital
    inversions: int  # images inverted per run
    inversion_steps: int
    synthetic_per_class: int  # released images per class for GAN-Leaks
    gan: dict = field(default_factory=dict)  # TrainConfig overrides (model sizes, for tests)


PROFILES = {
    "smoke": AttackProfile(rounds=4, canaries=200, inversions=2, inversion_steps=20, synthetic_per_class=50,
                           gan=dict(batch_size=16, nz=16, ngf=8, ndf=8, accountant="rdp", min_client_size=20)),
    "quick": AttackProfile(rounds=50, canaries=1000, inversions=4, inversion_steps=300, synthetic_per_class=500),
    "paper": AttackProfile(rounds=400, canaries=1000, inversions=16, inversion_steps=400, synthetic_per_class=1000),
}


@dataclass
class AttackConfig:
    dataset: str = "pneumoniamnist"
    data_dir: str | None = None
    profile: str = "paper"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epsilons: list[float] = field(default_factory=lambda: [math.inf, 10.0, 1.0])
    clients: int = 5
    partition: str = "dirichlet"
    alpha: float = 0.5
    delta: float = 1e-5
    device: str = "cpu"


def run_attacks(c: AttackConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Train and attack every (epsilon, seed); writes <out>/privacy_attacks/<run>.json per run
    (kept with ``resume``) and returns everything, summary included (also in attacks.json)."""
    if c.profile not in PROFILES:
        raise UserError(f"unknown profile '{c.profile}'; choose one of {', '.join(PROFILES)}")
    bad = [e for e in c.epsilons if not e > 0]
    if bad:
        raise UserError(f"--epsilon must be positive (got {bad[0]}); use inf for the clipping-only control")
    require_device(c.device)
    ds = load_dataset(c.dataset, c.data_dir)
    preflight([train_config(c, min(c.epsilons), seed) for seed in c.seeds], ds.train.labels)  # before any file
    folder = Path(out) / "privacy_attacks"
    if resume:
        _check_same_settings(c, folder)
    else:  # our own runs from an earlier call: none may be reused later under this call's settings
        for old in folder.glob("eps*-seed*"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(_settings(c), indent=2))
    started, runs = time.time(), []
    for eps in c.epsilons:
        for seed in c.seeds:
            path = folder / f"{_tag(eps, seed)}.json"
            if resume and path.exists():
                runs.append(json.loads(path.read_text()))
                continue
            record = attack_one(c, ds, eps, seed, folder, progress=progress)
            path.write_text(json.dumps(jsonable(record), indent=2))
            runs.append(record)
    report = {"config": asdict(c), "profile": asdict(PROFILES[c.profile]), "runs": runs,
              "accountant": train_config(c, 1.0, 0).accountant,
              "summary": summarise(runs), "wall_time_s": time.time() - started, "provenance": provenance(c.device)}
    (folder / "attacks.json").write_text(json.dumps(jsonable(report), indent=2))
    return report


_NOT_SETTINGS = ("seeds", "epsilons", "device", "data_dir")  # a run's name, or where it ran: not what it computed


def _settings(c: AttackConfig) -> dict:
    """What makes an (epsilon, seed) run's numbers besides its epsilon and seed (the file's name), as JSON."""
    return jsonable({"config": {k: v for k, v in asdict(c).items() if k not in _NOT_SETTINGS},
                     "profile": asdict(PROFILES[c.profile])})


def _check_same_settings(c: AttackConfig, folder: Path) -> None:
    """Runs are reused by file name, so only under the same settings (settings.json, or for folders
    from before it the attacks.json summary): anything else is refused, never mixed."""
    saved = next((json.loads(p.read_text()) for p in (folder / "settings.json", folder / "attacks.json")
                  if p.exists()), None)
    if saved is None:
        return
    want = _settings(c)
    saved = {"config": {k: v for k, v in saved["config"].items() if k not in _NOT_SETTINGS}, "profile": saved["profile"]}
    changed = sorted(k for part in want for k in set(saved[part]) | set(want[part])
                     if saved[part].get(k) != want[part].get(k))
    if changed:
        raise UserError(f"{folder} holds attack runs made with other {', '.join(changed)}; run without --resume "
                        "to start over, or choose another --out")


def _tag(eps: float, seed: int) -> str:
    return f"eps{'inf' if math.isinf(eps) else f'{eps:g}'}-seed{seed}"


def train_config(c: AttackConfig, eps: float, seed: int) -> TrainConfig:
    """The DP recipe at every epsilon; at inf, clipping without noise (same steps, same clipping)."""
    prof = PROFILES[c.profile]
    return TrainConfig(dataset=c.dataset, data_dir=c.data_dir, clients=c.clients, partition=c.partition,
                       alpha=c.alpha, epsilon=eps, delta=c.delta, seed=seed, rounds=prof.rounds, d_steps=5,
                       beta1_d=0.9, noise_multiplier=0.0 if math.isinf(eps) else None, simulation_noise=True,
                       synthetic_per_class=0, device=c.device, **prof.gan)


def attack_one(c: AttackConfig, ds: MedicalDataset, eps: float, seed: int, folder: Path, *,
               progress: bool = True) -> dict:
    """One training run with canaries, then (a) the audit, (b) membership inference, (c) inversion."""
    prof = PROFILES[c.profile]
    run = setup(train_config(c, eps, seed), ds)
    run.audit = CanaryAudit(run, per_hospital=prof.canaries, seed=10_000 + seed)
    first_d = copy.deepcopy(run.discriminator)  # D of round 1, for the inversion
    started = time.time()
    for _ in tqdm(range(prof.rounds), disable=not progress, desc=f"attacks {_tag(eps, seed)}", unit="round"):
        try:
            engine.train_round(run)
        except BudgetExhausted:
            break
    train_s = time.time() - started
    for h in run.clients:
        if h.budget is not None:
            h.budget.update_epsilon()
        cl.standing_bn_stats(h.sampler, seed=seed)
    claimed = max((h.budget.epsilon for h in run.clients if h.budget), default=math.inf)
    record = {"epsilon_target": eps, "seed": seed, "rounds": run.round, "epsilon_claimed": claimed,
              "noise_multipliers": [h.budget.noise_multiplier if h.budget else 0.0 for h in run.clients],
              "client_sizes": [h.n_examples for h in run.clients], "train_s": train_s,
              "audit": run.audit.result(delta=c.delta)}
    record["membership"] = membership(run, ds, seed, prof.synthetic_per_class)
    record["inversion"] = {name: inversion(run, d, prof, seed, folder / f"{_tag(eps, seed)}_inversion_{name}.pt")
                           for name, d in (("first", first_d), ("final", run.discriminator))}
    record["wall_s"] = time.time() - started
    return record


def membership(run, ds: MedicalDataset, seed: int, per_class: int) -> dict:
    """LOGAN (D's logit) and GAN-Leaks (distance to the nearest released synthetic image):
    training records vs the validation split, as many of each."""
    x_val, y_val = ds.val.tensors()
    x_tr, y_tr = ds.train.tensors()
    pick = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed))[:len(y_val)]
    x_in, y_in = x_tr[pick], y_tr[pick]
    d = run.discriminator
    logan = attack_summary(discriminator_membership_scores(d, x_in, y_in), discriminator_membership_scores(d, x_val, y_val))
    synthetic, _ = synthesize([h.sampler for h in run.clients], per_class, ds.num_classes, seed=seed)
    leaks = attack_summary(generator_membership_scores(x_in, synthetic), generator_membership_scores(x_val, synthetic))
    return {"logan": logan, "gan_leaks": leaks | {"synthetic_images": len(synthetic)}}


def inversion(run, discriminator: torch.nn.Module, prof: AttackProfile, seed: int, keep: Path) -> dict:
    """The server inverts a one-image upload (clipped gradient + the hospital's noise; fakes
    left out, which only helps the attacker) of the least-noised hospital, image by image."""
    c = run.config
    target = min(run.clients, key=lambda h: (h.budget.noise_multiplier if h.budget else 0.0, -h.n_examples))
    sigma = target.budget.noise_multiplier if target.budget else 0.0
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(target.n_examples, generator=gen)[:prof.inversions]
    params = list(discriminator.parameters())
    noise = torch.Generator(device=params[0].device).manual_seed(20_000 + seed)
    originals, rebuilt, scores = target.images[idx], [], []
    for x, y in zip(originals, target.labels[idx]):
        x, y = x[None], y[None]
        loss = cl.per_example_d_loss(discriminator, x, y, 1, run.objective).sum()
        grad = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grad))
        scale = min(1.0, c.max_grad_norm / (float(norm) + 1e-6))  # clipped to C, as the mechanism does
        upload = [g * scale + gaussian_noise_like(g, sigma * c.max_grad_norm, noise) for g in grad]
        r = invert_upload(discriminator, upload, y, image_shape=tuple(x.shape[1:]), steps=prof.inversion_steps,
                          objective=run.objective, seed=seed)
        rebuilt.append(r)
        scores.append(reconstruction_quality(r, x))
    mean_image = torch.cat([h.images for h in run.clients]).mean(0).expand_as(originals)  # a guess without the upload
    torch.save({"originals": originals.cpu(), "reconstructions": torch.cat(rebuilt).cpu()}, keep)
    return {"hospital": target.cid, "sigma": sigma, "images": len(idx),
            "psnr": float(np.mean([s["psnr"] for s in scores])), "ssim": float(np.mean([s["ssim"] for s in scores])),
            "per_image": scores, "reference_mean_image": reconstruction_quality(mean_image, originals)}


# ---------------------------------------------------------------------------------------------
# The table

ROWS = [  # (key, attack, what the number is, how to read it)
    ("first", "Gradient inversion (server), D of round 1", "PSNR dB / SSIM of rebuilt images",
     "the server rebuilds images from one hospital's upload of a one-image batch, computed on D as it was "
     "in round 1 (a malicious server can send that D again at any time)"),
    ("final", "Gradient inversion (server), final D", "PSNR dB / SSIM of rebuilt images",
     "the same against the trained D"),
    ("logan", "Membership inference on D (LOGAN)", "ROC AUC / TPR at 1 % FPR",
     "anyone holding D tells training records from unseen ones; 0.5 / 0.01 is chance"),
    ("gan_leaks", "Membership inference on the synthetic images (GAN-Leaks)", "ROC AUC / TPR at 1 % FPR",
     "anyone holding the released images does the same; 0.5 / 0.01 is chance"),
    ("audit", "Canary audit (one run)", "epsilon lower bound (95 %)",
     "the true epsilon is at least this with 95 % confidence; it must stay below the claim"),
]


def _pair(runs: list[dict], get) -> tuple[float, float]:
    v = np.array([get(r) for r in runs], dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 and np.isfinite(v).all() else 0.0


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (attack, epsilon): mean and sample sd over seeds."""
    rows = []
    for key, *_ in ROWS:
        for eps in sorted({float(r["epsilon_target"]) for r in runs}, key=lambda e: -e):
            group = [r for r in runs if float(r["epsilon_target"]) == eps]
            row = {"attack": key, "epsilon_target": eps, "seeds": [r["seed"] for r in group],
                   "epsilon_claimed": _pair(group, lambda r: r["epsilon_claimed"])}
            if key in ("first", "final"):
                row |= {"a": _pair(group, lambda r: r["inversion"][key]["psnr"]),
                        "b": _pair(group, lambda r: r["inversion"][key]["ssim"]),
                        "reference": (_pair(group, lambda r: r["inversion"][key]["reference_mean_image"]["psnr"])[0],
                                      _pair(group, lambda r: r["inversion"][key]["reference_mean_image"]["ssim"])[0])}
            elif key == "audit":
                row |= {"a": _pair(group, lambda r: r["audit"]["epsilon_lower"]),
                        "canaries": group[0]["audit"]["canaries"],
                        "ceiling": min(r["audit"].get("ceiling", math.nan) for r in group)}
            else:
                row |= {"a": _pair(group, lambda r: r["membership"][key]["auc"]),
                        "b": _pair(group, lambda r: r["membership"][key]["tpr_at_fpr"])}
            rows.append(row)
    return rows


def _eps(v: float) -> str:
    return "∞ (clipping only, σ = 0)" if math.isinf(v) else f"{v:g}"


def _ms(p: tuple[float, float], digits: int) -> str:
    return f"{p[0]:.{digits}f} ± {p[1]:.{digits}f}"


def table_markdown(report: dict) -> str:
    rows, c = report["summary"], report["config"]
    prof = report["profile"]
    lines = ["| attack | ε target | ε claimed | result (mean ± sd over seeds) | reference |", "|---|---|---|---|---|"]
    for key, name, metric, _ in ROWS:
        for row in (r for r in rows if r["attack"] == key):
            claimed = float(row["epsilon_claimed"][0])
            claimed = "∞" if math.isinf(claimed) else f"{claimed:.2f}"
            if key in ("first", "final"):
                result = f"PSNR {_ms(row['a'], 1)} dB, SSIM {_ms(row['b'], 2)}"
                ref = f"mean training image: {row['reference'][0]:.1f} dB, SSIM {row['reference'][1]:.2f}"
            elif key == "audit":
                result = f"ε ≥ {_ms(row['a'], 2)}"
                ref = f"{row['canaries']} canaries; all guesses right would show {row['ceiling']:.1f}"
            else:
                result = f"AUC {_ms(row['a'], 3)}, TPR@1% {_ms(row['b'], 3)}"
                ref = "chance: 0.500, 0.010"
            lines.append(f"| {name} | {_eps(float(row['epsilon_target']))} | {claimed} | {result} | {ref} |")
    meaning = "\n".join(f"- **{name}** ({metric}): {how}." for _, name, metric, how in ROWS)
    p = report["provenance"]
    foot = (f"{c['dataset']}, {c['clients']} hospitals ({c['partition']}, α = {c['alpha']}), seeds "
            f"{', '.join(map(str, c['seeds']))}, profile `{c['profile']}`: {prof['rounds']} rounds of 5 D steps "
            f"(the DP recipe at every ε; ∞ is the same run with the noise switched off), {prof['canaries']} canaries "
            f"per hospital, {prof['inversions']} images inverted per run. ε: per record of one hospital, add/remove, "
            f"δ = {c['delta']}, {report['accountant'].upper()} accountant, the largest over hospitals. Commit {p['git_sha']}, {p['hardware']}, "
            f"{sum(r['wall_s'] for r in report['runs']) / 60:.0f} min of training and attacks (sum over runs).")
    return "\n".join(lines) + "\n\n" + meaning + "\n\n" + foot + "\n"


def _name(dataset: str) -> str:
    return {"pneumoniamnist": "chest X-ray"}.get(dataset, dataset)


def write_table(out: str | Path) -> Path:
    """results/table4_privacy_attacks.md from <out>/privacy_attacks/attacks.json."""
    out = Path(out)
    source = out / "privacy_attacks" / "attacks.json"
    if not source.exists():
        raise UserError(f"{source} not found: run `python -m hfgan_core attacks --out {out}` first")
    report = json.loads(source.read_text())
    path = out / f"{STEM}.md"
    path.write_text(f"### Table 4: privacy attacks and audit ({_name(report['config']['dataset'])})\n\n"
                    + table_markdown(report))
    return path


def plot_inversions(out: str | Path, path: str | Path, *, seed: int = 0, columns: int = 8):
    """Originals (top row) and what the server rebuilt from their one-image uploads, per epsilon,
    against D of round 1 and the final D (seed ``seed``)."""
    import matplotlib.pyplot as plt
    folder = Path(out) / "privacy_attacks"
    data = []
    for p in sorted(folder.glob(f"eps*-seed{seed}_inversion_first.pt"), key=lambda p: -float(p.name.split("-")[0][3:])):
        eps = p.name.split("-")[0][3:]
        for when in ("first", "final"):
            kept = torch.load(folder / p.name.replace("_first", f"_{when}"), weights_only=True)
            label = f"ε {'∞ (σ=0)' if eps == 'inf' else eps}, {'D round 1' if when == 'first' else 'final D'}"
            data.append((label, kept))
    if not data:
        raise UserError(f"no inversions in {folder}: run the attacks first")
    n = min(columns, len(data[0][1]["originals"]))
    rows = [("original", data[0][1]["originals"])] + [(label, d["reconstructions"]) for label, d in data]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.2, 1.1 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for j in range(n):
            ax = axes[r][j]
            ax.imshow(((images[j].permute(1, 2, 0).squeeze(-1) + 1) / 2).clamp(0, 1).numpy(), cmap="gray",
                      vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    dataset = json.loads((folder / "attacks.json").read_text())["config"]["dataset"]
    fig.suptitle(f"Gradient inversion of one-image uploads ({_name(dataset)}):\nwhat the server rebuilds", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig
