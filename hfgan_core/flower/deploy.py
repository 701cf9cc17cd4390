"""Deployment helpers: each hospital's own data file, and its SuperNode's node config.

On a real consortium each hospital already holds its images; for the localhost deployment
(``scripts/flower_local.sh``) and its test we cut the shared file into the hospitals the
in-process run would draw (same partition, same seed), one MedMNIST-format .npz per hospital,
so each SuperNode reads only its own file.
"""
from __future__ import annotations

import json
import math
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..errors import UserError
from ..train import TrainConfig, check_config, hospital_parts
from .server_app import RUN_CONFIG_KEYS, config_from_run_config


def write_hospital_files(config: TrainConfig, out: str | Path) -> list[str]:
    """hospital<i>.npz (train_images uint8, train_labels (N, 1)) per hospital; returns the
    ``--node-config`` string of each SuperNode (its file, a folder of its own for its generator's
    state and ledger between messages, and its consent to no DP or seed-derived noise where the
    run asks for them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(config.dataset, config.data_dir)
    node_configs = []
    for cid, idx in enumerate(hospital_parts(config, ds.train.labels)):
        images = ds.train.images[idx]
        path = out / f"hospital{cid}.npz"
        np.savez(path, train_images=images[..., 0] if images.shape[-1] == 1 else images,
                 train_labels=ds.train.labels[idx].reshape(-1, 1).astype(np.uint8))
        state = (out / f"hospital{cid}-state").resolve()  # its generator between messages, on "its" disk
        # this script plays the hospitals too: their consent to what the run config asks of them
        consent = ("" if config.private else " allow-no-dp=true") + (" allow-simulation-noise=true"
                                                                     if config.simulation_noise else "")
        node_configs.append(f'partition-id={cid} num-classes={ds.num_classes} data-file="{path.resolve()}" '
                            f'state-dir="{state}"{consent}')
    return node_configs


def write_run_config(config: TrainConfig, out: str | Path, path: str | Path) -> Path:
    """A TOML file for ``flwr run --run-config``: the named keys of [tool.flwr.app.config], every
    other setting in ``settings`` (JSON), and ``out``."""
    values = asdict(config)
    named = {k: values.pop(k) for k in RUN_CONFIG_KEYS}
    named["epsilon"] = "inf" if math.isinf(named["epsilon"]) else named["epsilon"]
    named |= {"settings": json.dumps(values), "out": str(out)}
    path = Path(path)
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in named.items()))  # JSON scalars are TOML
    return path


def prepare(out: str, work: str, overrides: list[str]) -> dict:
    """The deployment's inputs: pyproject's [tool.flwr.app.config] with ``key=value`` overrides,
    each hospital's file and node config, and the run config."""
    run_config = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for kv in overrides:
        key, _, value = kv.partition("=")
        try:
            run_config[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            run_config[key] = value  # a bare string
    config, _, _ = config_from_run_config(run_config)
    check_config(config)
    return {"clients": config.clients, "node_configs": write_hospital_files(config, Path(work) / "hospitals"),
            "run_config": str(write_run_config(config, out, Path(work) / "run_config.toml"))}


if __name__ == "__main__":  # python -m hfgan_core.flower.deploy OUT WORK [key=value ...] (scripts/flower_local.sh)
    try:
        print(json.dumps(prepare(sys.argv[1], sys.argv[2], sys.argv[3:])))
    except (UserError, TypeError) as exc:
        sys.exit(f"error: {exc}")
