"""One exception type for problems the user can fix.

The command line prints its message as a single line and exits non-zero, so
every message must name the problem *and* the fix.
"""
from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """Bad input, missing data or an impossible setting (not a bug in our code)."""


def require_writable_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that could not be made or written: a file in its
    place or on its path, or a parent without write permission. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path} lies under {existing}, which is a file; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable; choose another {flag}")
