"""Moving tensors, states and settings through Flower's records (exact: float32 in, float32 out)."""
from __future__ import annotations

import json
import pickle
from dataclasses import asdict

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from ..train import TrainConfig


def tensors_record(tensors: list[torch.Tensor]) -> ArrayRecord:
    return ArrayRecord([t.detach().cpu().numpy() for t in tensors])


def record_tensors(record: ArrayRecord, device: str = "cpu") -> list[torch.Tensor]:
    return [torch.from_numpy(a.copy()).to(device) for a in record.to_numpy_ndarrays()]


def config_record(config: TrainConfig, **extra) -> ConfigRecord:
    """The run's settings as one JSON string (inf included), plus per-message values."""
    return ConfigRecord({"config": json.dumps(asdict(config)), **extra})


def record_config(record: ConfigRecord) -> TrainConfig:
    return TrainConfig.from_dict(json.loads(record["config"]))


def blob(obj) -> bytes:
    """A nest of dicts, lists and tensors as bytes: tensors travel as numpy arrays in one pickle
    (0.3 ms for a generator's 7 MB state, against 2.2 ms for ``torch.save``)."""
    return pickle.dumps(_map(obj, lambda t: t.detach().cpu().numpy()), protocol=5)


def unblob(data: bytes):
    return _map(pickle.loads(data), torch.from_numpy)  # only a hospital's own bytes are ever read here


def _map(obj, fn):
    """``fn`` applied to every tensor (or array) inside dicts, lists and tuples."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj
