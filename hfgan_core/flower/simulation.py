"""``python -m hfgan_core flower-sim``: the same run on Flower's simulation runtime.

Each hospital is a virtual SuperNode (``partition-id`` = its index) running the ClientApp in a
Ray worker; the ServerApp runs in this process. ``flwr.simulation.run_simulation`` starts and
stops everything itself, so no SuperLink or stray server outlives the run (``flwr run`` would
also install its own torch past this project's pin; see README).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..data import load_dataset
from ..errors import UserError
from ..train import TrainConfig, check_config, preflight
from .server_app import REPLY_TIMEOUT_S


def run_flower_simulation(config: TrainConfig, out: str | Path, *, dropout: float = 0.0,
                          timeout: float = REPLY_TIMEOUT_S, state_dir: str | Path | None = None,
                          verbose: bool = False) -> dict:
    """Run HF-GAN with one virtual SuperNode per hospital; returns privacy.json's content.
    ``state_dir``: the hospitals keep their generators in files there between messages (what a
    SuperNode's ``state-dir`` does) instead of in their contexts, which Flower copies to the
    worker and back with every message."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    check_config(config)
    if not 0 <= dropout < 1:
        raise UserError(f"--dropout must lie in [0, 1) (got {dropout})")
    out = Path(out)
    if (out / "config.json").exists():
        raise UserError(f"{out} already holds a run; choose another --out")
    from .client_app import STATE_DIR_ENV  # imported here: Flower and Ray load only when a simulation runs
    from .client_app import app as client_app
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    if state_dir is not None and Path(state_dir).exists() and not Path(state_dir).is_dir():
        raise UserError(f"--state-dir {state_dir} is a file; name a folder (it is created if missing)")
    # the data, hospitals, delta and epsilon here, in one line, rather than from inside Ray's workers
    preflight([config], load_dataset(config.dataset, config.data_dir, download=config.download).train.labels)
    previous = os.environ.pop(STATE_DIR_ENV, None)
    if state_dir is not None:  # the Ray workers inherit this process's environment
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        os.environ[STATE_DIR_ENV] = str(Path(state_dir).resolve())
    try:
        _run(config, out, dropout, timeout, verbose, client_app)
    finally:
        os.environ.pop(STATE_DIR_ENV, None)
        if previous is not None:
            os.environ[STATE_DIR_ENV] = previous
    if not (out / "privacy.json").exists():
        raise UserError(f"the Flower simulation ended before writing {out / 'privacy.json'}; rerun with --verbose")
    return json.loads((out / "privacy.json").read_text())


def _run(config: TrainConfig, out: Path, dropout: float, timeout: float, verbose: bool, client_app) -> None:
    from flwr.simulation import run_simulation

    from .server_app import make_server_app
    run_simulation(server_app=make_server_app(config, out, dropout=dropout, timeout=timeout),
                   client_app=client_app, num_supernodes=config.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": min(config.clients, os.cpu_count() or 1),
                                                 "include_dashboard": False, "log_to_driver": verbose}},
                   verbose_logging=verbose)
