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


def test_workers_benchmark_prints_ratio_line(monkeypatch, capsys):
    """benchmarks/benchmark_workers.py times the same benchmark in one process (with the workers'
    threads together) and with N workers, compares their rows and ends with the ratio line. The
    benchmark itself is stubbed here (its parallel path is tested in test_benchmark.py): a run that
    takes 3 s in one process and 2 s with workers must read 1.50, one row of two differing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import benchmark_workers as script
    import torch
    clock, calls = iter([0.0, 3.0, 10.0, 12.0]), []

    def run(config, out, *, workers, threads, **kw):
        calls.append((workers, threads, torch.get_num_threads(), config.methods, config.seeds))
        rows = [{"method": "fedavg", "seed": 0, "epsilon": float("inf"), "hyperparameters": {"lr": 0.01}, "auc": 0.9},
                {"method": "local", "seed": 0, "epsilon": float("inf"), "hyperparameters": {"lr": 0.01},
                 "auc": 0.8 + 0.01 * (workers > 1)}]
        return {"runs": rows}
    monkeypatch.setattr(script.bm, "run_benchmark", run)
    monkeypatch.setattr(script.time, "perf_counter", lambda: next(clock))
    threads = torch.get_num_threads()
    try:
        assert script.main(["--methods", "fedavg", "local", "--seeds", "0", "--workers", "2", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert calls == [(1, 1, 2, ["fedavg", "local"], [0]), (2, 1, 1, ["fedavg", "local"], [0])]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("rows that differ: 1 of 2 (e.g. ('local', 0, inf)")
    assert lines[-1] == "workers/one-process benchmark speed ratio: 1.50"


def test_paired_controls_scores_the_saved_probabilities(tmp_path):
    """benchmarks/paired_controls.py: each difference is the mean over seeds of HF-GAN's accuracy
    minus the control's on the saved test probabilities (checked by hand), with its interval around it."""
    import numpy as np
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=60)
    saved = {"y_test": y}
    for method, eps in (("hfgan", "10.0"), ("fedavg", "inf"), ("fedavg_steps", "inf"), ("fedavg_balanced", "inf"),
                        ("fedavg_null", "inf"), ("dp_fedavg", "10.0")):
        for seed in (0, 1):
            saved[f"{method}|{seed}|{eps}"] = rng.dirichlet(np.ones(3), size=(1, 60)).astype(np.float32)
    np.savez(tmp_path / "probas.npz", **saved)
    proc = subprocess.run([sys.executable, "benchmarks/paired_controls.py", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = (("fedavg", "inf"), ("fedavg_steps", "inf"), ("fedavg_balanced", "inf"), ("fedavg_null", "inf"),
            ("dp_fedavg", "10.0"))  # the DP classifier at HF-GAN's epsilon, last
    assert len(proc.stdout.splitlines()) == 1 + len(rows)
    for i, (control, eps) in enumerate(rows):
        expected = np.mean([np.mean(saved[f"hfgan|{s}|10.0"][0].argmax(-1) == y)
                            - np.mean(saved[f"{control}|{s}|{eps}"][0].argmax(-1) == y) for s in (0, 1)])
        line = proc.stdout.splitlines()[1 + i]
        delta, low, high = map(float, re.search(r"accuracy ([-+.\d]+) \[([-+.\d]+), ([-+.\d]+)\]", line).groups())
        assert delta == round(expected, 3) and low <= delta <= high


def test_recipe_compare_is_the_paired_difference_by_seed(tmp_path):
    """recipe_search.compare: the mean over shared seeds of A's score minus B's, from the latest record
    of each (an older record of a seed is superseded), with a Student-t interval computed here by hand."""
    import json
    import math

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import recipe_search as rs

    def record(recipe, seed, auc):
        return {"recipe": recipe, "dataset": "brainmri", "epsilon": 10.0, "seed": seed,
                "val": {"tstr": {"auc": auc, "macro_f1": auc - 0.2}, "cas": auc / 2, "coverage": [auc / 4, 0.3]}}
    lines = [record("a", 0, 0.10), record("a", 0, 0.80), record("a", 1, 0.70), record("a", 2, 0.90),
             record("b", 0, 0.75), record("b", 1, 0.70), record("b", 3, 0.99)]  # seed 2 and 3: one recipe only
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = rs.compare(path, "a", "b", "brainmri", 10.0)
    assert "seeds [0, 1]" in text
    d = [0.80 - 0.75, 0.70 - 0.70]
    mean, sd = sum(d) / 2, math.sqrt(sum((x - sum(d) / 2) ** 2 for x in d))  # sample sd, n - 1 = 1
    half = 12.706204736 * sd / math.sqrt(2)  # t(0.975, 1 df)
    auc = next(line for line in text.splitlines() if "TSTR AUC" in line)
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" in auc
    import pytest
    from hfgan_core.errors import UserError
    with pytest.raises(UserError, match="no seed"):
        rs.compare(path, "a", "c", "brainmri", 10.0)
