"""Finished parts of a benchmark, kept so that a stopped run continues where it was.

The paper profile takes hours on a CPU, longer than a session, and a GPU slot gives ten minutes
a command. So every finished result, (method, seed, epsilon) row, GAN judgement and tuning choice,
is written to ``<out>/units`` as it is made, and ``resume`` reuses them. A unit is reused only
when everything that made it is the same: the run's settings, the profile, the data file's bytes
and the code (a hash of the ``hfgan_core`` modules that make numbers; ``RENDER_ONLY`` ones are left
out). Anything else is refused, never mixed.
"""
from __future__ import annotations

import calendar
import fcntl
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .provenance import jsonable

PACKAGE = Path(__file__).resolve().parents[1]
# Modules that only render finished results (tables, figures, paired statistics, the command line) or
# that the benchmark never runs (the quality command, attacks, Flower): a change there keeps the units
# valid. Code that makes a number a unit stores must not live in them.
RENDER_ONLY = ("report.py", "stats.py", "sweeps.py", "__main__.py", "gan_quality.py", "benchmark/tables.py",
               "attacks/", "flower/")


def code_hash() -> str:
    """sha256 over the sources (path and bytes) of the modules that make a unit's numbers."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not name.startswith(RENDER_ONLY):
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Units:
    """``get``/``put`` of JSON units (with an optional array) under ``root``; ``stamp`` says what
    made them, ``provenance`` where (hardware, commit). Without ``resume`` (or with nothing to
    resume) the folder starts empty. ``worker``: a job of a parallel run (``jobs``), whose time the
    run's own invocation already counts."""
    _opened = itertools.count()  # two jobs of one worker process within a second keep two invocation files

    def __init__(self, root: str | Path, stamp: dict, *, resume: bool, provenance: dict | None = None,
                 worker: bool = False) -> None:
        self.root, self.stamp = Path(root), jsonable(stamp)
        saved = self.root / "stamp.json"
        self.resumed = resume and saved.exists()
        if self.resumed:
            old = _read_json(saved)
            if old != self.stamp:
                changed = sorted(_differences(old, self.stamp))
                raise UserError(f"{self.root} holds results made with other {', '.join(changed)}; "
                                "run without --resume to start over, or choose another --out")
        else:
            shutil.rmtree(self.root, ignore_errors=True)  # our own units from an earlier run
            self.root.mkdir(parents=True)
            _write(saved, json.dumps(self.stamp, indent=2))
        self.made, self.reused = 0, set()  # units written by this invocation; keys it took from earlier ones
        self.started = time.time()
        self.worker = worker
        self._me = self.root / "invocations" / (f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
                                                f"{f'-{next(self._opened)}' if worker else ''}.json")
        self._me.parent.mkdir(exist_ok=True)
        self.provenance = provenance or {}

    def _path(self, key: tuple) -> Path:
        return self.root / ("-".join(str(k) for k in key) + ".json")

    def get(self, key: tuple) -> dict | None:
        """The unit, with its array (if any) under ``_array``; None if it was never finished."""
        path = self._path(key)
        if not path.exists():
            return None
        unit = _read_json(path)
        if path.with_suffix(".npy").exists():
            unit["_array"] = np.load(path.with_suffix(".npy"))
        self.reused.add(key)
        return unit

    def has(self, key: tuple) -> bool:
        return self._path(key).exists()

    def put(self, key: tuple, unit: dict, array: np.ndarray | None = None) -> None:
        path = self._path(key)
        if array is not None:
            buffer = io.BytesIO()
            np.save(buffer, array)
            _write(path.with_suffix(".npy"), buffer.getvalue())
        _write(path, json.dumps(unit, default=_plain))  # last: a unit counts as finished once its JSON is there
        self.made += 1
        self.invocations()  # kept current: a run killed later still counts its time up to here

    def merge(self, key: tuple, entries: dict) -> dict:
        """Add ``entries`` to the dict unit ``key`` and return the whole: processes running side by side
        (``jobs``) each add their own, under a lock, so none overwrites another's. An entry both hold
        must agree: two processes that chose differently for one key would have made rows from both."""
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            path = self._path(key)
            held = json.loads(path.read_text()) if path.exists() else {}
            clash = [k for k in entries.keys() & held.keys() if jsonable(entries[k]) != jsonable(held[k])]
            if clash:
                raise RuntimeError(f"{key} {clash[0]} was already chosen differently by another process")
            if entries.keys() - held.keys():
                self.put(key, held | entries)
            return held | entries

    def invocations(self) -> list[dict]:
        """Every invocation that worked on these units, in the order they started (wall time up to
        now, units made and reused, hardware and commit from ``provenance``). Each writes its own
        file under ``invocations/``, so the worker processes of a parallel run (``jobs``) share the
        folder; ``tuning.json`` they extend with ``merge``."""
        now = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started)) + " UTC",
               "wall_time_s": time.time() - self.started, "units_made": self.made, "units_reused": len(self.reused),
               **({"worker": True} if self.worker else {}),
               **{k: self.provenance.get(k) for k in ("hardware", "git_sha", "python", "versions")}}
        _write(self._me, json.dumps(now))
        return [json.loads(f.read_text()) for f in sorted(self._me.parent.glob("*.json"))]


def elapsed_s(invocations: list[dict]) -> float:
    """Seconds during which at least one of these invocations ran: their intervals merged, so that
    invocations side by side (two processes on one run, or a resume started before another ended)
    are counted once, not summed."""
    spans = sorted((t, t + i["wall_time_s"]) for i in invocations
                   for t in [calendar.timegm(time.strptime(i["started"], "%Y-%m-%d %H:%M:%S UTC"))])
    total, end = 0.0, -math.inf
    for lo, hi in spans:
        total += max(0.0, hi - max(lo, end))
        end = max(end, hi)
    return total


def _plain(o):
    """numpy values as Python ones; anything else as text. (Infinity stays a number: json reads it back.)"""
    return o.tolist() if isinstance(o, (np.ndarray, np.generic)) else str(o)


def _differences(old: dict, new: dict) -> list[str]:
    """The keys whose values differ, a level down where both are dicts (settings: "clients", not "settings")."""
    out = []
    for k in set(old) | set(new):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k} ({sub})" for sub in sorted(x for x in set(a) | set(b) if a.get(x) != b.get(x))]
        elif a != b:
            out.append(k)
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not readable JSON (cut short when a run was killed?); delete it and run again "
                        "with --resume (that part is made again), or start over without --resume") from None


def _write(path: Path, data: str | bytes) -> None:
    """Write whole or not at all: a run killed mid-write leaves no half unit."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
