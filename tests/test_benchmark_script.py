"""The speed benchmark runs and ends with the ratio line the README quotes (its numbers are not checked)."""
import re
import subprocess
import sys

from conftest import ROOT


def test_dp_step_benchmark_prints_ratio_line():
    proc = subprocess.run([sys.executable, "benchmarks/dp_step.py", "--repeats", "1", "--steps", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"dp/plain speed ratio: \d+\.\d\d", lines[-1])
    assert any(line.startswith("opacus hooks (DP)") for line in lines)
