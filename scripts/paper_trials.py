"""The pinned paper benchmark, with each tuning trial kept as soon as it is finished.

Why: on seed 0 the benchmark tunes every classifier with up to 8 trial runs and then trains the
row, and it keeps a tuning only when all of its trials are done. On 2 CPU cores some rows' trials
together take longer than a session, and the processes stop with the session, so such a row would
never finish. This wrapper changes no number and no code of the pin: around the pinned
``Tuner.fit`` it wraps the ``train`` function so that a trial run (the tuning's trial seed) stores
its validation score under ``<out>/trials/`` and, when the same trial comes again in a later
process, returns that score instead of training again. The pinned ``fit`` still draws the points,
compares the scores and trains the row; the row itself (any other seed) is never taken from here.

A trial is "the same" when everything its run depends on is: the method, epsilon and tuning seed,
the classifier config and DP spec it is given (``repr``), the data its ``train`` closure holds (the
hospitals' images and labels, the synthetic images of a GAN row: hashed), and the run's unit stamp
(settings, profile, data file, code hash). Synthetic images are keyed by where they come from, not
by their bytes: the generators' weights hash (the one the pinned rows carry) and the sampling seed
(``tag_synthetic_images``). Why: a GAN block's trials on seed 0 take longer than a session, its
generators are committed so that the next session reuses them, and the next machine may compute
the same generators' images with other rounding (a GAN trained again from the same seeds on
2026-12-02 had other weights than the day before's, with the same code and libraries: most likely
another CPU model's vector kernels), which would change every byte-level key and redo every
trial. A GAN trained again with other weights still gets trials of its own. For the same reason
each DP-FedAvg-GAN is kept (``keep_dpfedavg_gan``): the pinned runner trains it in memory only.

The sweeps (``noniid``, ``ratio``) get one more thing the pin lacks: main's rule that every sweep
point holds the headline's tuning (``hfgan_core.sweeps`` on main, since 2026-11-30). The pinned
sweeps would tune every method again at every point. ``hold_sweep_tuning`` wraps the pinned
``sweeps._seed_units`` (a render-only module: the code hash stays the pin's). After the pinned
function has seeded the headline point from the headline run, every other point that has not
started gets its unit stamp and the headline run's tuning choices, each marked ``held_from``, as
main's ``sweeps._hold_tuning`` writes them. The pinned ``Tuner`` then takes them as its own.

Usage (what ``scripts/paper_runs.sh`` runs, in the pinned worktree, PYTHONPATH=<worktree>):
    python scripts/paper_trials.py benchmark --dataset D ... --out DIR --resume
    python scripts/paper_trials.py noniid --dataset D ... --out DIR --resume   # DIR: the parent of D's run
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from hfgan_core.benchmark import tuning
from hfgan_core.benchmark.units import _write, code_hash  # _write: whole or absent, as the units

PIN_CODE = "5bc79e6f"  # the pinned commit's number-making code (scripts/paper_runs.sh)


def digest(obj, h: "hashlib._Hash", seen: set, depth: int = 0) -> None:
    """Feed what ``obj`` holds into ``h``: tensors and arrays by their bytes, containers and
    function closures (``fed_run`` inside ``train``) walked; anything else by type and repr."""
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor) and hasattr(obj, "provenance"):  # synthetic: see tag_synthetic_images
        h.update(f"S{tuple(obj.shape)}{obj.dtype}{obj.provenance}".encode())
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{tuple(t.shape)}{t.dtype}".encode() + t.numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.shape}{obj.dtype}".encode() + np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            digest(obj[k], h, seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            digest(v, h, seen, depth + 1)
    elif isinstance(obj, types.FunctionType):  # its code is the pin's; what it closes over is data
        h.update(obj.__qualname__.encode())
        for cell in obj.__closure__ or ():
            try:
                digest(cell.cell_contents, h, seen, depth + 1)
            except ValueError:  # an empty cell
                h.update(b"empty")
    elif isinstance(obj, (str, int, float, bool, type(None))):
        h.update(repr(obj).encode())
    else:  # models, tqdm, extractors...: the trial's data and config are what can differ between runs
        h.update(type(obj).__qualname__.encode())


class TrialMemo:
    """``<out>/trials/<key>.json``: one finished trial's validation score."""

    def __init__(self, out: Path) -> None:
        self.out, self.dir = out, out / "trials"

    def wrap(self, method: str, eps: float, seed: int, fed, train):
        trial_seed = fed.seed + tuning.TRIAL_SEED
        data_key = []  # hashed at the first trial: a row whose tuning is already chosen has none

        def memo_train(cfg, spec):
            if cfg.seed != trial_seed:  # the row itself (a fresh run at the winner): always trained
                return train(cfg, spec)
            if not data_key:
                stamp = (self.out / "units" / "stamp.json").read_text()  # written by the run before any fit
                h = hashlib.sha256(f"{method}|{eps}|{seed}|{stamp}".encode())
                digest(train, h, set())
                data_key.append(h.hexdigest())
            key = hashlib.sha256(f"{data_key[0]}|{cfg!r}|{spec!r}".encode()).hexdigest()[:24]
            path = self.dir / f"{key}.json"
            if path.exists():
                score = json.loads(path.read_text())["val_auc"]
                print(f"trial reused: {method} eps={eps} {path.name} val_auc {score:.4f}", flush=True)
            else:
                t0 = time.time()
                score = tuning.validation_score(train(cfg, spec))
                self.dir.mkdir(parents=True, exist_ok=True)
                _write(path, json.dumps({"method": method, "epsilon": eps, "tuning_seed": seed, "val_auc": score,
                                         "config": repr(cfg), "dp": repr(spec), "wall_time_s": time.time() - t0,
                                         "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())},
                                        indent=1))
            # what the pinned fit reads of a trial's results: validation_score's mean over the models
            return [SimpleNamespace(best_round=1, val_history=[{"auc": score}])]

        return memo_train


def tag_synthetic_images() -> None:
    """Mark every synthetic image batch the pinned runner draws with its provenance (the generators'
    weights hash, the sampling seed), which ``digest`` reads instead of the images' bytes; the
    labels stay in the key by their bytes. The images themselves are untouched."""
    from hfgan_core.benchmark import runner
    original = runner.images_for_labels

    def images_for_labels(generators, labels, seed):
        x, y = original(generators, labels, seed)
        x.provenance = f"{runner.generators_sha256(generators)}|{seed}"
        return x, y

    runner.images_for_labels = images_for_labels


def keep_dpfedavg_gan(out: Path) -> None:
    """Keep each DP-FedAvg-GAN the pinned runner trains (its result: generator, sigma, epsilon) in
    ``<out>/gan_runs/dpfedavg_gan-seed<s>-eps<e>-<key>.pt`` and give it back when the same training
    comes again in a later process. Why: the runner trains it in memory, a seed-0 block (its GAN,
    8 trials and the row: about 5 hours on brain MRI) outlasts a session, and trained again on
    another CPU it has other weights, whose trials would be new ones. The same training: the
    hospitals' data, the config and the unit stamp. Committed (``git add -f``) while its block is
    unfinished, as HF-GAN's generators.pt is."""
    from hfgan_core.benchmark import runner
    original = runner.train_dpfedavg_gan

    def train_dpfedavg_gan(clients, *, num_classes, config, **kw):
        stamp = (out / "units" / "stamp.json").read_text()
        h = hashlib.sha256(f"{num_classes}|{config!r}|{stamp}".encode())
        digest(clients, h, set())
        path = out / "gan_runs" / f"dpfedavg_gan-seed{config.seed}-eps{config.epsilon:g}-{h.hexdigest()[:12]}.pt"
        if path.exists():
            print(f"DP-FedAvg-GAN reused: {path.name}", flush=True)
            return torch.load(path, weights_only=False)
        result = original(clients, num_classes=num_classes, config=config, **kw)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(result, buffer)
        _write(path, buffer.getvalue())
        return result

    runner.train_dpfedavg_gan = train_dpfedavg_gan


def install(out: Path) -> None:
    tag_synthetic_images()
    keep_dpfedavg_gan(out)
    original = tuning.Tuner.fit
    memo = TrialMemo(out)

    def fit(self, method, eps, seed, train, fed, dp=None, **kw):
        return original(self, method, eps, seed, memo.wrap(method, eps, seed, fed, train), fed, dp, **kw)

    tuning.Tuner.fit = fit


def hold_sweep_tuning(label: str) -> None:
    """Make the pinned sweeps start every point but the headline's at the headline run's tuning
    choices, marked ``held_from: label`` (the headline's column: "α = 0.5", or the profile's ratio)."""
    from hfgan_core import sweeps
    from hfgan_core.benchmark import jsonable, run_profile, runner
    from hfgan_core.errors import UserError
    original = sweeps._seed_units

    def seed_units(headline: Path, sub: Path, config) -> None:
        original(headline, sub, config)  # the headline's point: the headline run's finished units
        if (sub / "units" / "stamp.json").exists():
            return
        runner._check(config)
        prof = run_profile(config)
        ds = runner._load(config, prof)
        own = replace(config, partition="dirichlet", alpha=0.5, synthetic_ratio=None, gan_cache=None)  # the headline's
        if json.loads((headline / "units" / "stamp.json").read_text()) != jsonable(runner._stamp(own, run_profile(own), ds)):
            raise UserError(f"the headline run in {headline} was made with other settings, data or code than this "
                            "sweep; its tuning cannot be held")
        tuning = json.loads((headline / "units" / "tuning.json").read_text())
        missing = [m for m in config.methods if not any(key.split("|")[0] == m for key in tuning)]
        if missing or any(entry["seed"] != config.seeds[0] for entry in tuning.values()):
            raise UserError(f"the headline run in {headline} has no tuning on seed {config.seeds[0]} for "
                            f"{', '.join(missing) or 'its methods'} to hold; finish its seed 0 first "
                            "(scripts/paper_runs.sh status)")
        held = {key: entry | {"held_from": label} for key, entry in tuning.items() if key.split("|")[0] in config.methods}
        (sub / "units").mkdir(parents=True)
        (sub / "units" / "stamp.json").write_text(json.dumps(jsonable(runner._stamp(config, prof, ds))))
        (sub / "units" / "tuning.json").write_text(json.dumps(held))

    sweeps._seed_units = seed_units


def main(argv: list[str]) -> int:
    if not code_hash().startswith(PIN_CODE):
        print(f"error: hfgan_core on PYTHONPATH is not the pinned code ({PIN_CODE}...); "
              "run this through scripts/paper_runs.sh", file=sys.stderr)
        return 2
    if "--out" not in argv[:-1]:
        print("error: paper_trials.py needs the benchmark's --out DIR", file=sys.stderr)
        return 2
    if argv[0] in ("noniid", "ratio") and "--resume" not in argv:
        print("error: a paper sweep continues the headline run's units: add --resume", file=sys.stderr)
        return 2
    if argv[0] == "noniid":
        hold_sweep_tuning("α = 0.5")
    elif argv[0] == "ratio":
        from hfgan_core.benchmark import PROFILES
        profile = argv[argv.index("--profile") + 1] if "--profile" in argv[:-1] else "quick"
        hold_sweep_tuning(f"{PROFILES[profile].synthetic_ratio:g}" if profile in PROFILES else profile)  # (else refused)
    else:  # the sweeps try no trial: every point's choices are the headline's
        install(Path(argv[argv.index("--out") + 1]))
    from hfgan_core.__main__ import main as hfgan_main
    return hfgan_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
