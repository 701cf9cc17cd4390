"""Moving tensors, states and settings through Flower's records (exact: float32 in, float32 out)."""
from __future__ import annotations

import io
import json
from dataclasses import asdict

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
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unblob(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)
