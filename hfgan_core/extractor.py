"""The in-domain feature extractor behind IS and FID, trained once per dataset file and cached.

No Inception-v3 weights can be downloaded here, and ImageNet features say little about
28 px chest X-rays anyway, so IS and FID use a SmallCNN trained on the *real training split
only* (epoch chosen on validation). It is cached under ``results/extractors/`` keyed by the
data file's SHA-256, image size, training-set size and epochs, so every method and seed is scored by the same
network; the benchmark reports its test accuracy with every table, and the weights file's SHA-256 in
runs.json. The extractors behind committed tables are committed too, so their FIDs can be recomputed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .classifier import SmallCNN, train_classifier
from .data import MedicalDataset
from .errors import UserError

CACHE = Path("results/extractors")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_or_train_extractor(ds: MedicalDataset, *, epochs: int = 5, cache: Path = CACHE, seed: int = 0,
                            device: str = "cpu", expect_sha256: str | None = None) -> tuple[SmallCNN, dict]:
    """The in-domain extractor: loaded from ``cache``, or trained there. ``expect_sha256`` (a resumed
    benchmark: the weights its finished units were scored with) refuses any other file, and a missing
    one before training a new one that could not match."""
    sha = file_sha256(ds.path)
    name = f"{ds.name}_{ds.image_size}px_n{len(ds.train)}_e{epochs}_{sha[:12]}"
    weights, meta = cache / f"{name}.pt", cache / f"{name}.json"
    if expect_sha256 and not (weights.exists() and file_sha256(weights) == expect_sha256):
        raise UserError(f"{weights} is {'another file than' if weights.exists() else 'missing, and it is'} the "
                        f"extractor this run's finished units were scored with (sha256 {expect_sha256[:12]}...): put "
                        "that file back (it is committed with the results), or run without --resume")
    model = SmallCNN(channels=ds.channels, num_classes=ds.num_classes)
    if weights.exists() and meta.exists():
        model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        return model.to(device).eval(), json.loads(meta.read_text()) | _weights_info(weights)
    x, y = ds.train.tensors()
    model, log = train_classifier(x, y, num_classes=ds.num_classes, epochs=epochs, seed=seed, val=ds.val.tensors(),
                                  device=device)
    info = {"name": name, "architecture": "SmallCNN (width 32), features = 128-d pooled conv output",
            "trained_on": "real training split only; epoch chosen by validation AUC", "epochs": epochs,
            "data_sha256": sha, "val_auc": log["best_val_auc"]}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(weights)
    meta.write_text(json.dumps(info, indent=2))
    return model.eval(), info | _weights_info(weights)


def _weights_info(weights: Path) -> dict:
    """Which file scored the images, and its hash: what anyone recomputing a committed FID checks."""
    return {"weights_file": weights.as_posix(), "weights_sha256": file_sha256(weights)}
