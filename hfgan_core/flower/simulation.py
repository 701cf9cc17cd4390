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

from ..errors import UserError
from ..train import TrainConfig, check_config
from .server_app import REPLY_TIMEOUT_S


def run_flower_simulation(config: TrainConfig, out: str | Path, *, dropout: float = 0.0,
                          timeout: float = REPLY_TIMEOUT_S, verbose: bool = False) -> dict:
    """Run HF-GAN with one virtual SuperNode per hospital; returns privacy.json's content."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    check_config(config)
    if not 0 <= dropout < 1:
        raise UserError(f"--dropout must lie in [0, 1) (got {dropout})")
    out = Path(out)
    if (out / "config.json").exists():
        raise UserError(f"{out} already holds a run; choose another --out")
    from flwr.simulation import run_simulation  # imported here: Ray starts only when a simulation runs

    from .client_app import app as client_app
    from .server_app import make_server_app
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=make_server_app(config, out, dropout=dropout, timeout=timeout),
                   client_app=client_app, num_supernodes=config.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": min(config.clients, os.cpu_count() or 1),
                                                 "include_dashboard": False, "log_to_driver": verbose}},
                   verbose_logging=verbose)
    if not (out / "privacy.json").exists():
        raise UserError(f"the Flower simulation ended before writing {out / 'privacy.json'}; rerun with --verbose")
    return json.loads((out / "privacy.json").read_text())
