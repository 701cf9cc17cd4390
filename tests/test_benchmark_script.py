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


def test_paired_controls_scores_the_saved_probabilities(tmp_path):
    """benchmarks/paired_controls.py: each difference is the mean over seeds of HF-GAN's accuracy
    minus the control's on the saved test probabilities (checked by hand), with its interval around it."""
    import numpy as np
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=60)
    saved = {"y_test": y}
    for method, eps in (("hfgan", "10.0"), ("fedavg", "inf"), ("fedavg_steps", "inf"), ("fedavg_balanced", "inf"),
                        ("fedavg_null", "inf")):
        for seed in (0, 1):
            saved[f"{method}|{seed}|{eps}"] = rng.dirichlet(np.ones(3), size=(1, 60)).astype(np.float32)
    np.savez(tmp_path / "probas.npz", **saved)
    proc = subprocess.run([sys.executable, "benchmarks/paired_controls.py", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for control in ("fedavg", "fedavg_steps", "fedavg_balanced", "fedavg_null"):
        expected = np.mean([np.mean(saved[f"hfgan|{s}|10.0"][0].argmax(-1) == y)
                            - np.mean(saved[f"{control}|{s}|inf"][0].argmax(-1) == y) for s in (0, 1)])
        line = proc.stdout.splitlines()[1 + ("fedavg", "fedavg_steps", "fedavg_balanced", "fedavg_null").index(control)]
        delta, low, high = map(float, re.search(r"accuracy ([-+.\d]+) \[([-+.\d]+), ([-+.\d]+)\]", line).groups())
        assert delta == round(expected, 3) and low <= delta <= high
