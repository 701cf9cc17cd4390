"""Command line: ``python -m hfgan_core train ...`` (see README)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

from .benchmark import METHODS, BenchmarkConfig, run_benchmark
from .device import require_device
from .errors import UserError, require_writable_folder
from .gan_quality import DATASETS, QualityRunConfig, run_quality, write_markdown
from .report import TABLES, auto_device, make_tables
from .train import TrainConfig, saved_config, train

_HELP = {
    "dataset": "name of <name>.npz in the data directory (any MedMNIST-format file)",
    "data_dir": "folder holding the .npz files (default: $HFGAN_DATA_DIR or data/)",
    "clients": "number of hospitals", "partition": "iid, dirichlet (label skew) or quantity (size skew)",
    "alpha": "Dirichlet concentration (small = more skew)", "rounds": "federated rounds",
    "d_steps": "discriminator steps per round", "g_steps": "generator steps per client per round",
    "batch_size": "expected real images per client batch (= fakes per batch)",
    "max_grad_norm": "per-example clipping norm C",
    "clip_per_layer": "clip each D layer's part of an example's gradient to C / sqrt(layers) (the same bound C, "
                      "the same noise; off in the recipe)",
    "epsilon": "per-record, per-hospital epsilon target ('inf' disables DP)",
    "delta": "delta of the (epsilon, delta) guarantee", "accountant": "prv (default) or rdp",
    "noise_multiplier": "fixed sigma instead of calibrating it; training stops when epsilon is reached "
                        "(0 with --epsilon inf: clipping only, no noise and no guarantee -- a control)",
    "client_fraction": "fraction of clients selected each round",
    "diffaugment": "D sees every image, real or fake, shifted and with a square cut out (DiffAugment; "
                   "off in the recipe)",
    "device": "cpu, cuda, cuda:<index> or auto (cuda when present)",
    "download": "fetch a missing MedMNIST file through the medmnist package",
    "debug_exact_counts": "also write each hospital's exact class counts to NOT_PRIVATE_exact_class_counts.json "
                          "(sensitivity 1 each: for the data owner's eyes only, never publish)",
    "simulation_noise": "research mode: derive every hospital's DP noise from --seed (bit-reproducible; the "
                        "guarantee then assumes a trusted simulator). Default: noise from OS entropy, in no released file",
}


_TYPES = {"int": int, "float": float, "str": str}  # TrainConfig's annotations are strings here


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hfgan_core")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train HF-GAN on one dataset")
    _train_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this round (resume later)")
    p.add_argument("--no-progress", action="store_true")

    f = sub.add_parser("flower-sim", help="the same HF-GAN run on Flower's simulation runtime (one SuperNode "
                                          "per hospital)")
    _train_flags(f)
    f.add_argument("--dropout", type=float, default=0.0,
                   help="each hospital fails each message with this probability (the fault path)")
    f.add_argument("--state-dir", default=None,
                   help="keep each hospital's generator (weights, EMA, optimiser) in a file here between messages "
                        "instead of in its Flower context (as a SuperNode's state-dir does): faster")
    f.add_argument("--verbose", action="store_true", help="Flower's and Ray's logs")

    b = sub.add_parser("benchmark", help="every method on identical hospitals: table.csv, table.md, runs.json")
    b.add_argument("--dataset", required=True, help=_HELP["dataset"])
    b.add_argument("--data-dir", default=None, help=_HELP["data_dir"])
    b.add_argument("--methods", nargs="+", default=["all"], help="'all' or any of: " + ", ".join(METHODS))
    b.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    b.add_argument("--profile", default="quick", help="smoke (tests), quick (2-core CPU) or paper (GPU)")
    b.add_argument("--epsilon", nargs="+", type=float, default=[10.0],
                   help="one or more per-record epsilons for the private rows ('inf' allowed)")
    b.add_argument("--curve-epsilon", nargs="*", type=float, default=[],
                   help="extra epsilons for the privacy-utility curve (HF-GAN rows and the DP classifier only)")
    b.add_argument("--rounds", type=int, default=None, help="HF-GAN rounds (default: the profile's)")
    b.add_argument("--alpha", type=float, default=0.5, help=_HELP["alpha"])
    b.add_argument("--clients", type=int, default=5, help=_HELP["clients"])
    b.add_argument("--partition", default="dirichlet", help=_HELP["partition"])
    b.add_argument("--delta", type=float, default=1e-5, help=_HELP["delta"])
    b.add_argument("--synthetic-ratio", type=float, default=None,
                   help="synthetic images a hospital adds per real image (default: the profile's, 1.0 for quick)")
    b.add_argument("--mu", type=float, default=None, help="FedProx proximal weight (default: the profile's, 0.01)")
    b.add_argument("--device", default="cpu", help=_HELP["device"])
    b.add_argument("--out", required=True, help="folder for table.csv, table.md, runs.json")
    b.add_argument("--resume", action="store_true",
                   help="continue a stopped run in --out: reuse its finished results (same settings, data and code)")
    b.add_argument("--workers", type=int, default=1,
                   help="processes making rows side by side (each with cores / workers torch threads); same numbers")
    b.add_argument("--no-progress", action="store_true")

    q = sub.add_parser("quality", help="generator quality on the validation split: <out>/gan_quality.md")
    q.add_argument("--datasets", nargs="+", default=list(DATASETS))
    q.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    q.add_argument("--epsilon", nargs="+", type=float, default=[float("inf"), 10.0, 1.0],
                   help="per-record, per-hospital epsilons ('inf' = no DP)")
    q.add_argument("--rounds", type=int, default=None, help="HF-GAN rounds (default: the recipe's)")
    q.add_argument("--clients", type=int, default=5, help=_HELP["clients"])
    q.add_argument("--alpha", type=float, default=0.5, help=_HELP["alpha"])
    q.add_argument("--partition", default="dirichlet", help=_HELP["partition"])
    q.add_argument("--delta", type=float, default=1e-5, help=_HELP["delta"])
    q.add_argument("--data-dir", default=None, help=_HELP["data_dir"])
    q.add_argument("--device", default="cpu", help=_HELP["device"])
    q.add_argument("--out", default="results", help="gan_quality.md here, per-dataset JSON and runs below it")
    q.add_argument("--render-only", action="store_true", help="only rebuild gan_quality.md from the JSON files")
    q.add_argument("--resume", action="store_true",
                   help="continue interrupted runs with the same settings from their folders instead of retraining")
    q.add_argument("--no-progress", action="store_true")

    a = sub.add_parser("attacks", help="privacy attacks and the canary audit over epsilon and seeds: table 4")
    a.add_argument("--dataset", default="pneumoniamnist", help=_HELP["dataset"])
    a.add_argument("--data-dir", default=None, help=_HELP["data_dir"])
    a.add_argument("--profile", default="paper", help="smoke (tests), quick (50 rounds: a preview) or paper (the DP recipe, 400 rounds)")
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a.add_argument("--epsilon", nargs="+", type=float, default=[float("inf"), 10.0, 1.0],
                   help="per-record, per-hospital epsilons ('inf' = the clipping-only control, sigma = 0)")
    a.add_argument("--clients", type=int, default=5, help=_HELP["clients"])
    a.add_argument("--alpha", type=float, default=0.5, help=_HELP["alpha"])
    a.add_argument("--partition", default="dirichlet", help=_HELP["partition"])
    a.add_argument("--delta", type=float, default=1e-5, help=_HELP["delta"])
    a.add_argument("--device", default="cpu", help=_HELP["device"])
    a.add_argument("--out", default="results", help="table4_privacy_attacks.md here, runs in <out>/privacy_attacks")
    a.add_argument("--resume", action="store_true", help="keep runs already in <out>/privacy_attacks")
    a.add_argument("--render-only", action="store_true", help="only rebuild the table and figure from attacks.json")
    a.add_argument("--no-progress", action="store_true")

    for name, what in (("noniid", "FedAvg, null images, HF-GAN and centralized at alpha 0.1 / 0.5 / 1 and IID"),
                       ("ratio", "HF-GAN and its controls at 0.25 / 0.5 / 1 / 2 synthetic images per real image")):
        n = sub.add_parser(name, help=what)
        n.add_argument("--dataset", required=True, help=_HELP["dataset"])
        n.add_argument("--data-dir", default=None, help=_HELP["data_dir"])
        n.add_argument("--profile", default="quick", help="smoke (tests), quick (2-core CPU) or paper")
        n.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        n.add_argument("--epsilon", type=float, default=10.0, help="HF-GAN's per-record epsilon")
        n.add_argument("--device", default="cpu", help=_HELP["device"])
        n.add_argument("--out", default=None, help=f"<out>/<dataset>/{name}/: one benchmark per setting, {name}.md "
                       "(default: results for the paper profile, results/<profile> otherwise)")
        n.add_argument("--resume", action="store_true", help="continue a stopped sweep: reuse finished results")
        n.add_argument("--workers", type=int, default=1, help="processes making each setting's rows side by side")
        n.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("tables", help="run the dataset notebooks (papermill) and write results/README.md")
    t.add_argument("--profile", default="auto",
                   help="auto (paper on a CUDA GPU, quick otherwise), smoke, quick (a CPU preview) or paper")
    t.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    t.add_argument("--datasets", nargs="+", default=None, help="default: " + " ".join(TABLES))
    t.add_argument("--data-dir", default=None, help=_HELP["data_dir"])
    t.add_argument("--out", default=None,
                   help="default: results for the paper profile, results/<profile> for smoke and quick (a preview "
                        "never overwrites the committed tables)")
    t.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's (smoke 1 seed, quick 1, paper 5)")
    t.add_argument("--jobs", type=int, default=1, help="notebooks run side by side (each gets cores / jobs threads)")
    t.add_argument("--workers", type=int, default=1,
                   help="processes making each notebook's rows side by side (benchmark --workers; same numbers)")
    t.add_argument("--no-download", action="store_true",
                   help="do not fetch missing MedMNIST files (PneumoniaMNIST, RetinaMNIST) through medmnist")
    t.add_argument("--no-attacks", action="store_true", help="skip table 4 (the attacks on the chest X-ray runs)")
    t.add_argument("--resume", action="store_true",
                   help="continue stopped notebooks: reuse their finished results (same settings, data and code)")
    return parser


def _train_flags(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """Every TrainConfig field as a flag, and --out (``defaults=False``: absent flags stay out of the
    namespace, so that the flags a command line gave can be told from the defaults)."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if defaults else argparse.SUPPRESS
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=default, help=_HELP.get(f.name))
        else:
            p.add_argument(flag, type=_TYPES[f.type.split(" |")[0]], default=default, help=_HELP.get(f.name))
    p.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, privacy.json, ...)")


def main(argv: list[str] | None = None) -> int:
    """Run one command; a ``UserError`` from any of them is one line on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "device", None) == "auto" and args.command != "tables":  # tables: auto also picks the profile
        args.device = auto_device("auto")
    handler = {"train": _train, "benchmark": _benchmark, "quality": _quality, "attacks": _attacks,
               "noniid": _sweep, "ratio": _sweep, "tables": _tables,
               "flower-sim": _flower_sim}[args.command]
    try:
        if getattr(args, "out", None) is not None:
            require_writable_folder(args.out)
        return handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _given_train_flags(argv: list[str]) -> set[str]:
    """The TrainConfig fields this ``train`` command line sets itself (not by default)."""
    p = argparse.ArgumentParser(add_help=False)
    _train_flags(p, defaults=False)
    return set(vars(p.parse_known_args(argv)[0])) - {"out"}


def _train(args: argparse.Namespace) -> int:
    if args.resume:  # the saved run's settings; a flag that asks for other ones is refused by train()
        given = {name: getattr(args, name) for name in _given_train_flags(args.argv)}  # as parsed (device resolved)
        config = replace(saved_config(args.out), **given)
    else:
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    run = train(config, args.out, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    eps = [c.budget.epsilon for c in run.clients if c.budget]
    summary = f"max epsilon {max(eps):.3f} (delta={run.config.delta})" if eps else "no DP (epsilon = inf)"
    print(f"done: {run.round} rounds, {summary}; outputs in {args.out}")
    return 0


def _flower_sim(args: argparse.Namespace) -> int:
    from .flower.simulation import run_flower_simulation
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    privacy = run_flower_simulation(config, args.out, dropout=args.dropout, state_dir=args.state_dir,
                                    verbose=args.verbose)
    summary = (f"max epsilon {privacy['max_epsilon']:.3f} (delta={config.delta})" if "max_epsilon" in privacy
               else "no DP (epsilon = inf)")
    print(f"done: {privacy['rounds_completed']} rounds on Flower, {summary}; outputs in {args.out}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    return make_tables(profile=args.profile, device=args.device, datasets=args.datasets, out=args.out,
                       data_dir=args.data_dir, jobs=args.jobs, workers=args.workers, attacks=not args.no_attacks,
                       download=not args.no_download,
                       parameters=({"seeds": args.seeds} if args.seeds else {}) | ({"resume": True} if args.resume else {}))


def _quality(args: argparse.Namespace) -> int:
    device = args.device  # auto already resolved by main
    require_device(device)
    config = QualityRunConfig(datasets=args.datasets, seeds=args.seeds, epsilons=args.epsilon, clients=args.clients,
                              alpha=args.alpha, partition=args.partition, delta=args.delta, data_dir=args.data_dir,
                              device=device, gan={} if args.rounds is None else {"rounds": args.rounds})
    path = write_markdown(args.out) if args.render_only else None
    if path is None:
        run_quality(config, args.out, progress=not args.no_progress, resume=args.resume)
        path = Path(args.out) / "gan_quality.md"
    print(f"done: {path}")
    return 0


def _attacks(args: argparse.Namespace) -> int:
    from .attacks.experiment import AttackConfig, plot_inversions, run_attacks, write_table
    config = AttackConfig(dataset=args.dataset, data_dir=args.data_dir, profile=args.profile, seeds=args.seeds,
                          epsilons=args.epsilon, clients=args.clients, partition=args.partition, alpha=args.alpha,
                          delta=args.delta, device=args.device)
    if not args.render_only:
        run_attacks(config, args.out, resume=args.resume, progress=not args.no_progress)
    path = write_table(args.out)
    plot_inversions(args.out, Path(args.out) / "figures" / "table4_privacy_attacks_inversion.png")
    print(f"done: {path}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweeps import NONIID_METHODS, RATIO_METHODS, plot_sweep, run_noniid, run_ratio
    from .report import default_out
    noniid = args.command == "noniid"
    out = args.out or default_out(args.profile)  # a preview sweep never overwrites the committed one
    rows = (run_noniid if noniid else run_ratio)(args.dataset, out, profile=args.profile, seeds=args.seeds,
                                                 epsilon=args.epsilon, data_dir=args.data_dir, device=args.device,
                                                 progress=not args.no_progress, resume=args.resume,
                                                 workers=args.workers)
    root = Path(out) / args.dataset / args.command
    plot_sweep(rows, root / f"{args.command}.png", methods=NONIID_METHODS if noniid else RATIO_METHODS,
               xlabel="hospitals' label skew (Dirichlet α; IID: none)" if noniid else "synthetic images per real image",
               title=f"{args.dataset}: test accuracy ({args.profile} profile)")
    print(f"done: {root / (args.command + '.md')}")
    return 0


def benchmark_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The BenchmarkConfig of parsed ``benchmark`` flags."""
    methods = list(METHODS) if args.methods == ["all"] else args.methods
    return BenchmarkConfig(dataset=args.dataset, methods=methods, seeds=args.seeds, profile=args.profile,
                           epsilons=args.epsilon, curve_epsilons=args.curve_epsilon, alpha=args.alpha,
                           clients=args.clients, partition=args.partition, delta=args.delta, data_dir=args.data_dir,
                           device=args.device, synthetic_ratio=args.synthetic_ratio, mu=args.mu,
                           gan_rounds=args.rounds)


def _benchmark(args: argparse.Namespace) -> int:
    report = run_benchmark(benchmark_config(args), args.out, progress=not args.no_progress, resume=args.resume,
                           workers=args.workers)
    print(f"done: {len(report['runs'])} runs in {report['wall_time_s'] / 60:.1f} min; table in {args.out}/table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
