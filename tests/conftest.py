"""Shared fixtures: where the real data lives, and tiny MedMNIST-format files made on the fly."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HFGAN_DATA_DIR", ROOT / "data"))
# device-parametrized checks run on the GPU too where there is one (benchmarks/cuda_check.sh); CI has none
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def real_data(name: str) -> Path:
    """Path of a shared data file, or skip the test saying how to provide it; with HFGAN_REQUIRE_DATA=1
    (.ci/run sets it when ../shared/data is there) a missing file fails instead, so that CI cannot
    pass green with the real-data tests skipped."""
    path = DATA_DIR / name
    if not path.exists():
        how = "run .ci/run (links ../shared/data into data/) or set HFGAN_DATA_DIR"
        if os.environ.get("HFGAN_REQUIRE_DATA") == "1":
            pytest.fail(f"{path} absent although HFGAN_REQUIRE_DATA=1: {how}")
        pytest.skip(f"{path} absent: {how}")
    return path


def write_npz(path: Path, *, n=(40, 12, 12), size=28, channels=1, classes=3, seed=0, **override) -> Path:
    """A valid MedMNIST-format archive with random pixels; ``override`` replaces arrays by key."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).astype(np.uint8).reshape(-1, 1)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


# A small run on a tiny file: 3 hospitals (quantity skew), tiny models; tests add what they vary.
TINY_RUN = dict(dataset="tiny", clients=3, partition="quantity", alpha=2.0, min_client_size=20, batch_size=8,
                ndf=8, ngf=8, nz=16, accountant="rdp")


def tiny_config(**kw):
    from hfgan_core.train import TrainConfig
    return TrainConfig(**(TINY_RUN | kw))


@pytest.fixture
def tiny(tmp_path):
    """tiny.npz: 150 / 20 / 20 random-pixel images of 3 classes, loaded."""
    from hfgan_core.data import load_dataset
    write_npz(tmp_path / "tiny.npz", n=(150, 20, 20), classes=3)
    return load_dataset("tiny", tmp_path)


@pytest.fixture
def fake_zenodo(tmp_path, monkeypatch):
    """A loopback HTTP server standing in for MedMNIST's Zenodo record, serving a small
    MedMNIST-format retinamnist.npz; medmnist's registry points at it (URL, MD5, split sizes)."""
    import hashlib
    import http.server
    import threading
    from functools import partial
    import medmnist
    served = write_npz(tmp_path / "zenodo" / "retinamnist.npz", n=(30, 10, 10), size=28, channels=3, classes=5)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    info = dict(medmnist.INFO["retinamnist"], url=f"http://127.0.0.1:{server.server_port}/retinamnist.npz",
                MD5=hashlib.md5(served.read_bytes()).hexdigest(), n_samples={"train": 30, "val": 10, "test": 10})
    monkeypatch.setitem(medmnist.INFO, "retinamnist", info)
    yield info, served
    server.shutdown()


@pytest.fixture
def cli(capsys, monkeypatch):
    """``python -m hfgan_core ARGS`` from the repository root, run in this process: a fresh interpreter
    spends about 4 s importing torch, and the bad-input tests make dozens of calls. Returns a
    CompletedProcess (returncode, stdout, stderr). tests/test_cli.py runs each command once as a
    real process, so the entry point itself stays covered."""
    import subprocess

    from hfgan_core.__main__ import main
    monkeypatch.chdir(ROOT)

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()  # drop what the test printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)
    return run


def assert_one_clear_line(proc, message: str) -> None:
    """Bad input: exit status 2 and one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture
def tf32_on():
    """TF32 allowed for cuDNN convolutions and cuBLAS matmuls, as a caller may have left it; the
    process's own flags are put back after the test, whatever happens."""
    cudnn, cublas = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, cublas.allow_tf32
    cudnn.allow_tf32 = cublas.allow_tf32 = True
    yield cudnn, cublas
    cudnn.allow_tf32, cublas.allow_tf32 = saved
