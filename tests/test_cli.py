"""The entry point as users meet it: `python -m hfgan_core COMMAND` in a fresh process answers bad input
with one line on stderr and exit status 2, no traceback, nothing written. (The other bad-input tests
call the same ``main`` in-process through the ``cli`` fixture; this one covers what they cannot:
``sys.exit``, the imports a command needs, anything printed outside ``main``.)"""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_clear_line


@pytest.mark.parametrize("command,args,message", [
    ("train", ["--epsilon", "-1"], "--epsilon must be positive"),
    ("benchmark", ["--dataset", "pneumoniamnist", "--methods", "nosuch"], "unknown method"),
    ("quality", ["--epsilon", "0"], "--epsilon values must be positive"),
    ("tables", ["--jobs", "0"], "--jobs must be at least 1"),
    ("flower-sim", ["--dropout", "1.5"], "--dropout must lie in [0, 1)"),
])
def test_a_command_refuses_bad_input_in_one_line_from_a_real_process(tmp_path, command, args, message):
    proc = subprocess.run([sys.executable, "-m", "hfgan_core", command, "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert_one_clear_line(proc, message)
    assert not (tmp_path / "out").exists()
