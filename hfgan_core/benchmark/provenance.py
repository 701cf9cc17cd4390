"""What a result was computed with: commit, hardware, package versions; and JSON that keeps infinity."""
from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path

import torch


def provenance(device: str) -> dict:
    import importlib.metadata as md
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # edits to tracked files outside results/ (the outputs, e.g. the notebook papermill is writing)
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":(exclude)results"], capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        sha, dirty = "unknown", False
    packages = ("torch", "torchvision", "opacus", "numpy", "scikit-learn", "torchmetrics")
    return {"git_sha": sha + ("+dirty" if dirty else ""), "device": device,
            "hardware": f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                        f"{torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'}",
            "python": platform.python_version(), "versions": {p: md.version(p) for p in packages}}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jsonable(o):
    """inf -> "inf" (JSON has no infinity); containers recursively; paths and the like as text."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    return o if isinstance(o, (str, int, float, bool, type(None))) else str(o)
