"""The benchmark runner on the smoke profile: every method, the tables, the sealed test split,
and clean failures; plus the federated classifier's aggregation, FedProx and DP-SGD."""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

import hfgan_core.benchmark as bm
import hfgan_core.benchmark.runner as runner
import hfgan_core.benchmark.tables as bm_tables
import hfgan_core.benchmark.units as units_module
from conftest import ROOT, assert_one_clear_line, real_data
from hfgan_core.classifier import SmallCNN
from hfgan_core.benchmark.tuning import TRIAL_SEED
from hfgan_core.benchmark.units import Units
from hfgan_core.dpfedavg_gan import DPFedAvgGANConfig, train_dpfedavg_gan
from hfgan_core.federated import DPSpec, FedConfig, _average, _planned_steps, train_federated
from hfgan_core.partition import partition
from hfgan_core.errors import UserError
from hfgan_core.privacy import compute_epsilon
from hfgan_core.train import trained_generators


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke benchmark (all methods, one seed) shared by the tests below; records test reads."""
    real_data("pneumoniamnist.npz")
    out = tmp_path_factory.mktemp("bench")
    reads = []
    original = bm.SealedTest.read

    def spy(self, key):
        reads.append(key)
        return original(self, key)
    bm.SealedTest.read = spy
    try:
        report = bm.run_benchmark(bm.BenchmarkConfig(dataset="pneumoniamnist", methods=list(bm.METHODS), seeds=[0],
                                                     profile="smoke"), out, progress=False)
    finally:
        bm.SealedTest.read = original
    return out, report, reads


def epoch_steps(run: dict) -> float:
    """Optimizer steps of one local epoch, summed over the hospitals: what the controls equalise
    (each row tunes its own learning rate and number of local epochs)."""
    c = run["classifier"]
    return sum(c["optimizer_steps"]) / (sum(c["rounds_run"]) * run["hyperparameters"]["local_epochs"])


def test_tables_hold_every_method_and_metric(smoke):
    out, report, _ = smoke
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows] == list(bm.METHODS)
    saved = np.load(out / "probas.npz")  # every row's test probabilities (models, N, K)
    y = saved["y_test"]
    for r in rows:  # the table's numbers, recomputed by scikit-learn from what the row predicted
        p = saved[next(k for k in saved.files if k.startswith(f"{r['method']}|0|"))]
        want = {"accuracy": np.mean([accuracy_score(y, m.argmax(1)) for m in p]),
                "macro_f1": np.mean([f1_score(y, m.argmax(1), average="macro", labels=[0, 1], zero_division=0)
                                     for m in p]),
                "auc": np.mean([roc_auc_score(y, m[:, 1]) for m in p])}
        for metric, value in want.items():
            assert float(r[metric]) == pytest.approx(value, abs=1e-4), (r["method"], metric)
        if bm.METHODS[r["method"]].gan:
            assert float(r["fid"]) > 0 and float(r["inception_score"]) >= 1.0 - 1e-6
    md = (out / "table.md").read_text()
    for method in bm.METHODS.values():
        assert f"| {method.label} |" in md
    assert "in-domain extractor" in md and "δ = 1e-05" in md
    # the DP classifier is private at its round cap's epsilon, not at what its early-stopped steps spent
    assert f"| {bm.METHODS['dp_fedavg'].label} | 10.00 | — | yes | ≤ 10.00 (cap) |" in md


def test_runs_json_has_provenance_and_privacy(smoke):
    out, _, _ = smoke
    report = json.loads((out / "runs.json").read_text())
    prov = report["provenance"]
    assert prov["git_sha"] and torch.__version__.startswith(prov["versions"]["torch"]) and prov["hardware"]
    by = {r["method"]: r for r in report["runs"]}
    assert by["hfgan"]["unit"] == "record" and float(by["hfgan"]["gan_epsilon"]) <= 10
    assert by["hfgan"]["released_epsilon"] == "inf"  # its classifier saw real images without DP
    assert float(by["hfgan_synth_only"]["released_epsilon"]) == float(by["hfgan"]["gan_epsilon"])
    assert by["dpfedavg_gan"]["unit"] == "hospital" and float(by["dpfedavg_gan"]["gan_epsilon"]) <= 10
    assert by["dp_fedavg"]["classifier_dp"] and float(by["dp_fedavg"]["released_epsilon"]) <= 10
    assert len(by["local"]["per_hospital_accuracy"]) == 5
    from hfgan_core.extractor import file_sha256
    ex = report["extractor"]  # the FIDs can be recomputed with exactly this file
    assert ex["weights_sha256"] == file_sha256(ROOT / ex["weights_file"])


def test_every_gan_is_judged_on_validation(smoke):
    out, report, _ = smoke
    judged = {(q["gan"], float(q["epsilon"])) for q in report["gan_quality"]}
    assert judged == {("hfgan", 10.0), ("dpfedavg_gan", 10.0)}
    for q in report["gan_quality"]:
        assert all(math.isfinite(x) for x in (q["tstr"]["auc"], q["cas"], q["fid"]))  # each was measured
        assert len(q["coverage"]) == len(q["recall"]) == 2
    assert "Generator quality (validation split" in (out / "table.md").read_text()
    run_dir = out / "gan_runs" / "hfgan-seed0-eps10.0"
    assert (run_dir / "generators.pt").exists() and (run_dir / "synthetic.npz").exists()


def test_test_split_is_read_once_per_result(smoke):
    _, report, reads = smoke
    expected = {(r["method"], r["seed"], r["epsilon"] if r["epsilon"] != "inf" else math.inf) for r in report["runs"]}
    results = [k for k in reads if len(k) == 3]
    assert len(results) == len(set(results)) == len(expected)
    assert set(results) == expected
    assert sorted(k for k in reads if len(k) == 1) == [("extractor",), ("reference",)]


def test_controls_and_paired_deltas(smoke):
    """The equal-steps control takes the synthetic rows' optimizer steps; the null-image control
    trains on as many images; each row's delta vs FedAvg is its accuracy minus FedAvg's on the
    same seed, from the saved per-example probabilities."""
    out, report, _ = smoke
    by = {r["method"]: r for r in report["runs"]}
    steps = {m: epoch_steps(by[m]) for m in ("fedavg", "fedavg_steps", "fedavg_null", "hfgan")}
    assert steps["fedavg_steps"] > steps["fedavg"]
    assert abs(steps["fedavg_steps"] - steps["hfgan"]) <= 5  # within one batch per hospital
    assert steps["fedavg_null"] == steps["hfgan"]  # the same labels and ratio, other images
    saved = np.load(out / "probas.npz")
    assert len(saved["y_test"]) == 624 and saved["local|0|inf"].shape == (5, 624, 2)
    rows = {r["method"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert rows["fedavg"]["delta_vs_fedavg"] == ""
    for m in ("hfgan", "fedavg_null", "centralized"):
        for score, key in (("accuracy", "delta_vs_fedavg"), ("balanced_accuracy", "bal_delta_vs_fedavg")):
            assert float(rows[m][key]) == pytest.approx(float(rows[m][score]) - float(rows["fedavg"][score]))
            assert float(rows[m][f"{key}_low"]) <= float(rows[m][key]) <= float(rows[m][f"{key}_high"])
    # one seed: the interval is the test set's part alone, which for accuracy has a closed form: the
    # mean of the per-image paired differences (correct, averaged over a row's models) +- 1.96 standard errors
    y = saved["y_test"]
    correct = {m: (saved[next(k for k in saved.files if k.startswith(f"{m}|0|"))].argmax(-1) == y).mean(0)
               for m in ("fedavg", "hfgan", "fedavg_null", "centralized")}
    for m in ("hfgan", "fedavg_null", "centralized"):
        diff = correct[m] - correct["fedavg"]
        low, high = float(rows[m]["delta_vs_fedavg_low"]), float(rows[m]["delta_vs_fedavg_high"])
        assert (low + high) / 2 == pytest.approx(diff.mean(), abs=1e-3)
        assert (high - low) / 2 == pytest.approx(1.96 * diff.std(ddof=1) / len(y) ** 0.5, rel=0.1, abs=2e-3)
    assert rows["hfgan"]["bal_delta_vs_null"] != "" and rows["fedavg_null"]["bal_delta_vs_null"] == ""
    md = (out / "table.md").read_text()
    assert "Δ acc. vs FedAvg" in md and "Δ bal. acc. vs null images" in md
    # one seed: the interval has no seed-to-seed variation, and the footnote says so (not with two)
    assert "has the test-set part only" in md
    two = report | {"config": report["config"] | {"seeds": [0, 1]}}
    assert "has the test-set part only" not in bm_tables.footnotes(two)


def test_the_tuning_note_names_choices_at_an_end_of_their_grid():
    """A choice at the smallest or largest value of a numeric axis of 3+ values is flagged; interior
    choices, two-value axes and boolean axes are not (the committed brain MRI local row: lr 1e-2)."""
    lr = [3e-4, 1e-3, 3e-3, 1e-2]
    tuning = {
        "local|inf": {"space": {"lr": lr, "local_epochs": [1, 2]}, "chosen": {"lr": 1e-2, "local_epochs": 2}},
        "fedavg|inf": {"space": {"lr": lr, "local_epochs": [1, 2]}, "chosen": {"lr": 3e-3, "local_epochs": 1}},
        "fedprox|inf": {"space": {"mu": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]}, "chosen": {"mu": 1e-4, "lr": 3e-3}},
        "dp_fedavg|10.0": {"space": {"batch_size": [64, 256, 1024], "keep_optimizer": [False, True],
                                     "rounds": [50, 200]},
                           "chosen": {"batch_size": 256, "keep_optimizer": True, "rounds": 200}},
    }
    assert bm_tables.edge_choices(tuning) == [
        "Local only (mean over hospitals): lr = 0.01, the largest of 4",
        "FedProx: mu = 0.0001, the smallest of 6"]
    tuning["dp_fedavg|10.0"]["chosen"]["batch_size"] = 1024
    assert bm_tables.edge_choices(tuning)[-1] == "DP classifier (DP-SGD FedAvg) at ε = 10: batch_size = 1024, the largest of 3"
    assert "lr = 0.01, the largest of 4" in bm_tables.edge_note(tuning)
    assert bm_tables.edge_note({"fedavg|inf": tuning["fedavg|inf"]}) == ""


def test_every_method_is_tuned_with_the_same_budget_on_validation(smoke):
    """Each (method, epsilon) tried the profile's number of configurations of its own grid, kept the
    one with the best validation AUC (checked by brute force), and its row is a fresh run of that
    configuration (the trials used another classifier seed)."""
    out, report, _ = smoke
    budget = bm.PROFILES["smoke"].tune
    assert budget >= 2
    for r in report["runs"]:
        t = report["tuning"][f"{r['method']}|{float(r['epsilon'])}"]
        assert len(t["tried"]) == budget == t["budget"]
        points = [p["point"] for p in t["tried"]]
        assert len({json.dumps(p, sort_keys=True) for p in points}) == budget  # distinct points
        for p in points:  # every point from the method's grid (the default point first)
            assert all(v in t["space"][key] for key, v in p.items() if key in t["space"] and p is not points[0])
        scores = [p["val_auc"] for p in t["tried"]]
        assert t["chosen"] == points[int(np.argmax(scores))]
        assert r["hyperparameters"] == t["inherited"] | t["chosen"]
        assert t["trial_seed"] == t["seed"] + TRIAL_SEED != r["seed"]
    tuning = {k.split("|")[0]: v for k, v in report["tuning"].items() if k.split("|")[1] in ("inf", "10.0")}
    spaces = {m: v["space"] for m, v in tuning.items()}
    assert spaces["fedprox"] == {"mu": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]}
    assert {"batch_size", "max_grad_norm", "lr", "rounds"} <= set(spaces["dp_fedavg"]) == set(spaces["dp_fedavg_clip"])
    assert set(spaces["fedavg_aug"]) == {"augment_strength"} and set(spaces["fedavg"]) == {"lr", "local_epochs"}
    # FedProx and augmentation start from FedAvg's choice; the equal-steps control from HF-GAN's epochs
    fedavg = {k: tuning["fedavg"]["chosen"][k] for k in ("lr", "local_epochs")}
    assert tuning["fedprox"]["inherited"] == tuning["fedavg_aug"]["inherited"] == fedavg
    assert tuning["fedavg_steps"]["inherited"] == {"local_epochs": tuning["hfgan"]["chosen"]["local_epochs"]}
    by = {r["method"]: r for r in report["runs"] if r["epsilon"] in (math.inf, 10.0)}
    assert by["fedavg_steps"]["hyperparameters"]["local_epochs"] == by["hfgan"]["hyperparameters"]["local_epochs"]
    # the DP classifier and its clipping-only control: one grid, the same draw of points
    assert [p["point"] for p in tuning["dp_fedavg"]["tried"]] == [p["point"] for p in tuning["dp_fedavg_clip"]["tried"]]
    assert "at most 2 configurations" in (out / "table.md").read_text()


def test_tuner_tunes_once_and_reuses_the_choice_for_other_seeds():
    """The trials run with a classifier seed no row uses; the first seed's row is a fresh run at the
    winner (the best score), and the second seed trains once, at that winner."""
    from hfgan_core.benchmark.tuning import Tuner, candidates
    from hfgan_core.federated import FedConfig, FedResult
    fed = FedConfig(rounds=8)
    calls = []

    def train(cfg, dp):
        calls.append(cfg)
        auc = 1 - abs(math.log10(cfg.lr) + 2.5) - 0.01 * cfg.local_epochs  # best at lr 3e-3, one epoch
        return [FedResult(model=None, best_round=1, val_history=[{"auc": auc}], epsilons=None, noise_multipliers=None)]
    tuner = Tuner(k=8)  # the whole lr x epochs grid
    _, point = tuner.fit("fedavg", math.inf, 0, train, fed)
    assert len(calls) == 9 and point == {"lr": 3e-3, "local_epochs": 1}
    assert {c.seed for c in calls[:8]} == {TRIAL_SEED} and (calls[8].seed, calls[8].lr) == (0, 3e-3)
    _, again = tuner.fit("fedavg", math.inf, 1, train, replace(fed, seed=1))
    assert again == point and len(calls) == 10 and (calls[-1].seed, calls[-1].lr) == (1, 3e-3)
    first = candidates("fedprox", FedConfig(mu=0.01), None, k=4, seed=0)
    assert first[0] == {"mu": 0.01}  # the profile's point first
    assert first == candidates("fedprox", FedConfig(mu=0.01), None, k=4, seed=0)  # seeded
    assert len(candidates("fedavg", fed, None, k=50, seed=0)) == 8  # never more than the grid
    calls.clear()  # one configuration (the quick profile): nothing is chosen, so the row is the only run
    _, only = Tuner(k=1).fit("fedavg", math.inf, 0, train, fed)
    assert only == {"lr": fed.lr, "local_epochs": fed.local_epochs} and [c.seed for c in calls] == [0]
    # one grid, one draw, whatever the method's name
    assert candidates("fedavg_null", fed, None, k=4, seed=0) == candidates("hfgan", fed, None, k=4, seed=0)


def test_methods_that_add_a_knob_start_from_their_parents_choice():
    """FedProx tries only μ values, each at FedAvg's chosen learning rate and local epochs, so it can
    always reach FedAvg's point (μ → 0); the equal-steps control takes HF-GAN's local epochs. A
    parent that was not run leaves the profile's values; one that arrives later refuses the reuse."""
    from hfgan_core.benchmark.tuning import Tuner
    from hfgan_core.federated import FedConfig, FedResult
    tried = []

    def train(cfg, dp):
        tried.append(cfg)
        auc = 1 - abs(math.log10(cfg.lr) + 2.5) - 0.01 * cfg.local_epochs - 0.001 * abs(math.log10(cfg.mu or 1e-9) + 2)
        return [FedResult(model=None, best_round=1, val_history=[{"auc": auc}], epsilons=None, noise_multipliers=None)]
    tuner = Tuner(k=6)
    fed = FedConfig(rounds=8, lr=1e-3, local_epochs=1, mu=0.01)
    _, point = tuner.fit("fedprox", math.inf, 0, train, fed)  # no FedAvg yet: the profile's lr and epochs
    assert {(c.lr, c.local_epochs) for c in tried} == {(1e-3, 1)} and tuner.log["fedprox|inf"]["inherited"] == {}
    tuner.log["fedavg|inf"] = {"chosen": {"lr": 3e-3, "local_epochs": 2}}  # the parent arrives later (a resume)
    tried.clear()
    with pytest.raises(UserError, match="no longer starts where its parent's does"):
        tuner.fit("fedprox", math.inf, 1, train, fed)
    assert tried == []
    tuner.log.clear(), tried.clear()
    tuner.log["fedavg|inf"] = {"chosen": {"lr": 3e-3, "local_epochs": 2}}
    tuner.log["hfgan|10.0"] = {"chosen": {"lr": 3e-4, "local_epochs": 2}}
    _, point = tuner.fit("fedprox", math.inf, 0, train, fed)
    assert {(c.lr, c.local_epochs) for c in tried} == {(3e-3, 2)}
    assert sorted(c.mu for c in tried[:-1]) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]  # the whole μ grid, then the row
    assert point == {"lr": 3e-3, "local_epochs": 2, "mu": 1e-2}
    tried.clear()
    _, point = tuner.fit("fedavg_steps", math.inf, 0, train, replace(fed, mu=0.0), parent_eps=10.0)
    assert {c.local_epochs for c in tried} == {2} and sorted(c.lr for c in tried[:-1]) == [3e-4, 1e-3, 3e-3, 1e-2]
    assert point == {"local_epochs": 2, "lr": 3e-3}
    tried.clear()
    _, again = tuner.fit("fedavg_steps", math.inf, 1, train, replace(fed, mu=0.0), parent_eps=10.0)  # a later seed
    assert again == point and [(c.lr, c.local_epochs) for c in tried] == [(3e-3, 2)]


def test_sealed_test_refuses_a_second_read():
    class Fake:
        class test:
            @staticmethod
            def tensors():
                return torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    sealed = bm.SealedTest(Fake())
    sealed.read(("fedavg", 0, 10.0))
    with pytest.raises(RuntimeError, match="already read"):
        sealed.read(("fedavg", 0, 10.0))



def test_a_stopped_benchmark_resumes_to_the_same_results(tmp_path, monkeypatch):
    """Killed after some rows and resumed, a run gives the uninterrupted run's numbers, trains
    nothing it had finished and reads the test split only for the rows it still had to make."""
    real_data("pneumoniamnist.npz")
    config = bm.BenchmarkConfig(dataset="pneumoniamnist", methods=["fedavg", "hfgan", "dp_fedavg"], seeds=[0],
                                profile="smoke")
    full = bm.run_benchmark(config, tmp_path / "full", progress=False)
    put = Units.put

    def put_then_stop(self, key, unit, array=None):  # the session ends right after the HF-GAN row
        put(self, key, unit, array)
        if key[:2] == ("row", "hfgan"):
            raise KeyboardInterrupt
    monkeypatch.setattr(Units, "put", put_then_stop)
    with pytest.raises(KeyboardInterrupt):
        bm.run_benchmark(config, tmp_path / "part", progress=False)
    monkeypatch.setattr(Units, "put", put)
    reads, gans, read = [], [], bm.SealedTest.read
    monkeypatch.setattr(bm.SealedTest, "read", lambda self, key: reads.append(key) or read(self, key))
    monkeypatch.setattr(runner, "trained_generators", lambda *a, **kw: gans.append(a) or trained_generators(*a, **kw))
    resumed = bm.run_benchmark(config, tmp_path / "part", progress=False, resume=True)
    assert gans == [] and reads == [("extractor",), ("dp_fedavg", 0, 10.0), ("reference",)]
    assert [(r["method"], r["epsilon"]) for r in resumed["runs"]] == [(r["method"], r["epsilon"]) for r in full["runs"]]
    for a, b in zip(full["runs"], resumed["runs"]):
        assert {k: a[k] for k in ("accuracy", "auc", "macro_f1", "hyperparameters", "classifier")} == \
               {k: b[k] for k in ("accuracy", "auc", "macro_f1", "hyperparameters", "classifier")}
    assert resumed["gan_quality"] == full["gan_quality"] and resumed["tuning"] == full["tuning"]
    p_full, p_part = np.load(tmp_path / "full" / "probas.npz"), np.load(tmp_path / "part" / "probas.npz")
    assert sorted(p_full.files) == sorted(p_part.files)
    assert all(np.array_equal(p_full[k], p_part[k]) for k in p_full.files)
    calls = resumed["invocations"]
    assert len(calls) == 2 and calls[1]["units_made"] == 2  # the DP row and the tuning log it updated
    assert "over 2 invocations" in (tmp_path / "part" / "table.md").read_text()


def test_workers_make_the_rows_one_process_makes(smoke, tmp_path):
    """Rows made as jobs in worker processes (spawned, each tuning on its own) equal the one-process
    run's: the tuned points, the GAN and its judgement, the numbers and the saved test probabilities.
    The methods chosen are the ones whose jobs wait for another's choice (FedProx from FedAvg's, the
    equal-steps control from HF-GAN's); that they come out as in the run with every method shows
    also that no row depends on which rows ran before it."""
    out, one, _ = smoke
    methods = ["fedavg", "fedprox", "hfgan", "fedavg_steps"]
    config = bm.BenchmarkConfig(dataset="pneumoniamnist", methods=methods, seeds=[0], profile="smoke")
    par = bm.run_benchmark(config, tmp_path, progress=False, workers=2, threads=torch.get_num_threads())
    keys = ("accuracy", "balanced_accuracy", "auc", "macro_f1", "hyperparameters", "classifier", "fid")
    expected = {(r["method"], r["epsilon"]): {k: r.get(k) for k in keys} for r in one["runs"] if r["method"] in methods}
    assert {(r["method"], r["epsilon"]): {k: r.get(k) for k in keys} for r in par["runs"]} == expected
    assert par["tuning"] == {k: v for k, v in one["tuning"].items() if k.split("|")[0] in methods}
    assert par["gan_quality"] == [q for q in one["gan_quality"] if q["gan"] == "hfgan"]
    p_one, p_par = np.load(out / "probas.npz"), np.load(tmp_path / "probas.npz")
    assert sorted(p_par.files) == sorted(f for f in p_one.files if f.split("|")[0] in methods + ["y_test"])
    assert all(np.array_equal(p_one[k], p_par[k]) for k in p_par.files)
    jobs = [c for c in par["invocations"] if c.get("worker")]
    assert len(jobs) == 4 and sum(c["units_made"] for c in jobs) >= 4  # the GAN block is one job, its judgement too
    assert par["wall_time_s"] < sum(c["wall_time_s"] for c in par["invocations"])  # the jobs' time: not added
    assert "made by 4 jobs in worker processes (`--workers`)" in (tmp_path / "table.md").read_text()


def test_wall_time_counts_invocations_side_by_side_once():
    import calendar
    rng = np.random.default_rng(0)
    t0 = calendar.timegm((2026, 11, 28, 18, 0, 0))
    calls = [{"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0 + int(rng.integers(0, 3000)))),
              "wall_time_s": int(rng.integers(1, 2000))} for _ in range(6)]
    busy = np.zeros(6000, bool)  # brute force: every second some invocation ran
    for c in calls:
        start = calendar.timegm(time.strptime(c["started"], "%Y-%m-%d %H:%M:%S UTC")) - t0
        busy[start:start + c["wall_time_s"]] = True
    assert units_module.elapsed_s(calls) == busy.sum()
    assert units_module.elapsed_s(calls) < sum(c["wall_time_s"] for c in calls)  # they overlap: not the sum


def test_jobs_wait_for_the_choices_they_read():
    """The plan of a parallel run makes every row the one-process run makes, once, and orders its
    jobs as the tuning protocol needs: the first seed's job of a method before the other seeds'
    (they reuse its choice), FedAvg's before FedProx's and augmentation's, HF-GAN's (headline epsilon)
    before the equal-steps control's."""
    from hfgan_core.benchmark.jobs import plan
    config = bm.BenchmarkConfig(dataset="pneumoniamnist", methods=list(bm.METHODS), seeds=[3, 1, 2], profile="quick",
                                epsilons=[10.0], curve_epsilons=[1.0, math.inf])  # quick: the curve on seed 3 only
    jobs = plan(config)
    made = [(m, j.seed, math.inf if j.epsilon is None else j.epsilon) for j in jobs for m in j.methods]
    plain = [m for m in bm.METHODS if m not in bm.PRIVATE_ROWS]
    expected = ([(m, s, math.inf) for m in plain for s in (3, 1, 2)]
                + [(m, s, 10.0) for m in bm.PRIVATE_ROWS for s in (3, 1, 2)]
                + [(m, 3, e) for m in bm.CURVE_METHODS for e in (1.0, math.inf) if (m, e) != ("dp_fedavg", math.inf)])
    assert sorted(made, key=str) == sorted(expected, key=str) and len(made) == len(set(made))

    def job(method: str, seed: int, eps: float | None = None) -> int:
        return next(i for i, j in enumerate(jobs) if method in j.methods and j.seed == seed and j.epsilon == eps)
    for i, j in enumerate(jobs):
        assert all(n < i for n in j.needs)
        if j.seed != 3:
            assert j.needs == (job(j.methods[0], 3, j.epsilon),)
    assert jobs[job("fedprox", 3)].needs == jobs[job("fedavg_aug", 3)].needs == (job("fedavg", 3),)
    assert jobs[job("fedavg_steps", 3)].needs == (job("hfgan", 3, 10.0),)
    assert len(jobs[job("hfgan", 1, 10.0)].methods) == 3  # one GAN, one job
    assert jobs[job("hfgan", 3, 1.0)].methods == ("hfgan", "hfgan_synth_only")


def test_processes_side_by_side_add_their_tuning_choices_without_losing_any(tmp_path):
    stamp = {"settings": {}, "code": "x"}
    a = Units(tmp_path, stamp, resume=False)
    b = Units(tmp_path, stamp, resume=True, worker=True)  # opened before a chose anything
    a.merge(("tuning",), {"fedavg|inf": {"chosen": {"lr": 0.01}}})
    assert b.merge(("tuning",), {"local|inf": {"chosen": {"lr": 0.001}}}) == {
        "fedavg|inf": {"chosen": {"lr": 0.01}}, "local|inf": {"chosen": {"lr": 0.001}}}
    assert a.get(("tuning",)) == b.merge(("tuning",), {"fedavg|inf": {"chosen": {"lr": 0.01}}})  # the same: fine
    with pytest.raises(RuntimeError, match="fedavg|inf was already chosen differently"):
        b.merge(("tuning",), {"fedavg|inf": {"chosen": {"lr": 0.003}}})


def test_resume_refuses_results_of_other_settings_or_code(tmp_path, monkeypatch):
    stamp = {"settings": {"alpha": 0.5}, "code": "hfgan_core sha256 a"}
    Units(tmp_path, stamp, resume=False).put(("row", "fedavg", 0, 10.0), {"accuracy": 0.8}, np.ones(3))
    for other, changed in (({"alpha": 1.0}, r"settings \(alpha\)"), (stamp["settings"], "code")):
        with pytest.raises(UserError, match=f"other {changed}; run without --resume to start over"):
            Units(tmp_path, {"settings": other, "code": "hfgan_core sha256 b" if changed == "code" else stamp["code"]},
                  resume=True)
    unit = Units(tmp_path, stamp, resume=True).get(("row", "fedavg", 0, 10.0))
    assert unit["accuracy"] == 0.8 and np.array_equal(unit["_array"], np.ones(3))
    assert Units(tmp_path, stamp, resume=False).get(("row", "fedavg", 0, 10.0)) is None  # no --resume: a fresh start
    # the code hash follows the bytes of every module that makes numbers, and only those
    for folder in ("benchmark", "attacks", "flower"):
        (tmp_path / "pkg" / folder).mkdir(parents=True)
    for name in ("train.py", "benchmark/runner.py", "report.py", "benchmark/tables.py", "attacks/audit.py",
                 "flower/server_app.py", "privacy.py"):
        (tmp_path / "pkg" / name).write_text("x = 1\n")
    monkeypatch.setattr(units_module, "PACKAGE", tmp_path / "pkg")
    before = units_module.code_hash()
    for name in ("report.py", "benchmark/tables.py", "attacks/audit.py", "flower/server_app.py"):  # not run by it
        (tmp_path / "pkg" / name).write_text("x = 2\n")
        assert units_module.code_hash() == before
    for name in ("train.py", "benchmark/runner.py", "privacy.py"):
        (tmp_path / "pkg" / name).write_text("x = 2\n")
        assert units_module.code_hash() != before
        before = units_module.code_hash()

@pytest.mark.parametrize("args,message", [
    (["--methods", "nosuch"], "unknown method"),
    (["--profile", "huge"], "unknown profile"),
    (["--epsilon", "0"], "must be positive"),
    (["--seeds", "0", "0"], "must not repeat"),
    (["--synthetic-ratio", "0"], "--synthetic-ratio must be positive"),
    (["--mu", "-1"], "--mu (FedProx) must be positive"),
    (["--dataset", "nosuchset"], "nosuchset.npz not found"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--device", "gpu"], "--device must be cpu, cuda, cuda:<index> or auto"),
    (["--delta", "0.5"], "--delta 0.5 is not below 1/"),
    (["--clients", "10000"], "10000 clients x minimum size"),
    (["--epsilon", "1e-7"], "epsilon=1e-07 is out of reach"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, cli, args, message):
    real_data("pneumoniamnist.npz")
    proc = cli("benchmark", "--dataset", "pneumoniamnist", "--seeds", "0", "--profile", "smoke",
               "--out", tmp_path / "b", *args)
    assert_one_clear_line(proc, message)
    assert not (tmp_path / "b").exists()  # nothing half-written



def test_a_refused_run_leaves_the_earlier_results_alone(tmp_path, cli):
    """A fresh run wipes its folder's earlier units, so every setting a later step would refuse (hospitals,
    delta, epsilon out of reach) is refused first; a unit cut short is one line under --resume too."""
    real_data("pneumoniamnist.npz")
    units = tmp_path / "b" / "units"
    units.mkdir(parents=True)
    (units / "row-fedavg-0-inf.json").write_text("{}")
    cmd = ["benchmark", "--dataset", "pneumoniamnist", "--seeds", "0", "1", "--profile", "smoke", "--methods", "fedavg",
           "hfgan", "--out", tmp_path / "b", "--no-progress"]
    for bad, message in ((["--delta", "0.5"], "is not below 1/"), (["--clients", "10000"], "training examples"),
                         (["--epsilon", "1e-7"], "out of reach"), (["--partition", "weird"], "unknown partition")):
        assert_one_clear_line(cli(*cmd, *bad), message)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "b").rglob("*")) == [
        "b/units", "b/units/row-fedavg-0-inf.json"]
    (units / "stamp.json").write_text('{"settings": {"cut')
    assert_one_clear_line(cli(*cmd, "--resume"), "stamp.json is not readable JSON")


def test_cli_resume_with_other_settings_is_one_clear_line(tmp_path, cli):
    real_data("pneumoniamnist.npz")
    cmd = ["benchmark", "--dataset", "pneumoniamnist", "--seeds", "0", "--profile", "smoke", "--methods", "fedavg",
           "--out", tmp_path / "b", "--no-progress"]
    assert cli(*cmd).returncode == 0
    again = cli(*cmd, "--resume")
    calls = json.loads((tmp_path / "b" / "runs.json").read_text())["invocations"]
    assert again.returncode == 0 and len(calls) == 2 and calls[1]["units_made"] == 0  # nothing left to do
    proc = cli(*cmd, "--resume", "--alpha", "1.0")
    assert_one_clear_line(proc, "holds results made with other settings (alpha); run without --resume to start over")

# ---- the federated classifier --------------------------------------------------------------

def test_fedavg_average_is_the_size_weighted_mean():
    states = [{"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)},
              {"w": torch.tensor([5.0, 0.0]), "b": torch.tensor(-1.0)}]
    avg = _average(states, [100, 300])
    assert torch.allclose(avg["w"], torch.tensor([0.25 * 1 + 0.75 * 5, 0.25 * 2 + 0.75 * 0]))
    assert torch.allclose(avg["b"], torch.tensor(0.25 * 3 + 0.75 * -1))


def _toy(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3 + (y.float() * 2 - 1).view(-1, 1, 1, 1) * 0.5
    return x, y


def test_fedprox_stays_closer_to_the_global_model():
    hospitals, val = [_toy(seed=1), _toy(seed=2)], _toy(seed=3)
    cfg = FedConfig(rounds=1, local_epochs=3, batch_size=16, width=8, lr=1e-2)

    def drift(mu):
        res = train_federated(hospitals, val, num_classes=2, config=FedConfig(**{**cfg.__dict__, "mu": mu}))
        torch.manual_seed(0)
        init = SmallCNN(channels=1, num_classes=2, width=8)  # the same initial weights train_federated drew
        return sum(((a - b) ** 2).sum() for a, b in zip(res.model.parameters(), init.parameters())).item()
    assert drift(10.0) < 0.5 * drift(0.0)


def test_a_hospital_that_keeps_its_optimizer_trains_as_one_adam_run(monkeypatch):
    """keep_optimizer: one hospital's rounds equal one continuous Adam run over the same batches
    (brute force); without it, Adam restarts every round."""
    import torch.nn.functional as F

    import hfgan_core.federated as fed
    aucs = iter(range(100))  # every round is the best so far: the last round's model is returned
    monkeypatch.setattr(fed, "classification_metrics", lambda y, p: {"auc": next(aucs)})
    hospital, val = _toy(96, 1), _toy(seed=3)
    cfg = FedConfig(rounds=3, batch_size=16, width=8, lr=1e-2)

    def by_hand(fresh: bool) -> list[torch.Tensor]:
        torch.manual_seed(cfg.seed)
        model = SmallCNN(channels=1, num_classes=2, width=8)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        for r in range(cfg.rounds):
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr) if fresh else opt
            order = torch.randperm(96, generator=torch.Generator().manual_seed(fed._seed(cfg, r, 0)))
            for idx in order.split(16):
                opt.zero_grad()
                F.cross_entropy(model(hospital[0][idx]), hospital[1][idx]).backward()
                opt.step()
        return [p.detach() for p in model.parameters()]

    for keep in (True, False):
        got = train_federated([hospital], val, num_classes=2, config=FedConfig(**{**cfg.__dict__, "keep_optimizer": keep}))
        for fresh in (True, False):
            same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got.model.parameters(), by_hand(fresh)))
            assert same == (fresh != keep)


def test_dp_classifier_is_calibrated_for_the_steps_it_takes(monkeypatch):
    from opacus.optimizers import DPOptimizer
    hospitals, val = [_toy(96, 1), _toy(160, 2)], _toy(seed=3)
    cfg = FedConfig(rounds=2, local_epochs=1, batch_size=16, width=8)
    steps = []
    original = DPOptimizer.step

    def count(self, *a, **k):
        steps.append((self.noise_multiplier, self.max_grad_norm, self.expected_batch_size))
        return original(self, *a, **k)
    monkeypatch.setattr(DPOptimizer, "step", count)
    res = train_federated(hospitals, val, num_classes=2, config=cfg, dp=DPSpec(epsilon=3.0, accountant="rdp"))
    planned = _planned_steps(hospitals, [[0, 1], [0, 1]], cfg)
    assert planned == [2 * 6, 2 * 10] and len(steps) == sum(planned)
    # the optimizer steps with the sigma accounted for its hospital, in schedule order (each round:
    # hospital 0's 6 steps, then hospital 1's 10), at the spec's clipping norm and batch B
    s0, s1 = res.noise_multipliers
    assert s0 != s1 and steps == 2 * ([(s0, 1.0, 16)] * 6 + [(s1, 1.0, 16)] * 10)
    for sigma, n, k, eps in zip(res.noise_multipliers, (96, 160), planned, res.epsilons):
        assert eps == compute_epsilon(noise_multiplier=sigma, sample_rate=16 / n, steps=k, delta=1e-5, accountant="rdp")
        assert 2.9 < eps <= 3.0


def test_training_stops_when_validation_stops_improving(monkeypatch):
    """With patience p the loop ends p rounds after the best validation AUC (a scripted sequence
    stands in for the model's scores), keeps that round's model, and counts the steps taken."""
    import hfgan_core.federated as fed
    aucs = iter([0.6, 0.7, 0.65, 0.69, 0.8, 0.7, 0.7, 0.7, 0.9, 0.9, 0.9])
    monkeypatch.setattr(fed, "classification_metrics", lambda y, p: {"auc": next(aucs)})
    hospitals, val = [_toy(96, 1), _toy(40, 2)], _toy(seed=3)
    cfg = FedConfig(rounds=11, patience=3, local_epochs=2, batch_size=16, width=8)
    res = train_federated(hospitals, val, num_classes=2, config=cfg)
    assert res.best_round == 5 and res.rounds_run == 8 and len(res.val_history) == 8  # 5 + 3 without progress
    assert res.steps == [8 * 2 * 6, 8 * 2 * 3]  # rounds x local epochs x ceil(N / B)
    aucs = iter([0.5 + 0.01 * r for r in range(11)])
    assert train_federated(hospitals, val, num_classes=2, config=cfg).rounds_run == 11  # never stalls: the cap


def test_dp_classifier_that_stops_early_reports_what_it_spent(monkeypatch):
    import hfgan_core.federated as fed
    aucs = iter([0.9, 0.5, 0.5, 0.5, 0.5, 0.5])
    monkeypatch.setattr(fed, "classification_metrics", lambda y, p: {"auc": next(aucs)})
    hospitals, val = [_toy(96, 1), _toy(160, 2)], _toy(seed=3)
    cfg = FedConfig(rounds=6, patience=2, local_epochs=1, batch_size=16, width=8)
    res = train_federated(hospitals, val, num_classes=2, config=cfg, dp=DPSpec(epsilon=3.0, accountant="rdp"))
    assert res.rounds_run == 3 and res.steps == [3 * 6, 3 * 10]  # sigma was calibrated for 6 rounds
    for sigma, n, k, eps in zip(res.noise_multipliers, (96, 160), res.steps, res.epsilons):
        assert eps == compute_epsilon(noise_multiplier=sigma, sample_rate=16 / n, steps=k, delta=1e-5, accountant="rdp")
        assert eps < 2.5  # half the planned steps: well under the target of 3


def test_dp_classifiers_train_to_their_round_cap(tmp_path, monkeypatch):
    """DP-SGD's noise is calibrated for the round cap, so the DP rows (and their tuning trials, and
    the clipping-only control) train all of it, the round kept by validation, while the other rows
    stop on the profile's patience."""
    real_data("pneumoniamnist.npz")
    prof = bm.PROFILES["smoke"]
    monkeypatch.setitem(bm.PROFILES, "smoke", replace(prof, fed=replace(prof.fed, rounds=3, patience=1)))
    seen = []
    original = runner.train_federated

    def spy(*args, config, dp=None, **kwargs):
        result = original(*args, config=config, dp=dp, **kwargs)
        seen.append((dp is not None, config.patience, result.rounds_run, config.rounds))
        return result
    monkeypatch.setattr(runner, "train_federated", spy)
    bm.run_benchmark(bm.BenchmarkConfig(dataset="pneumoniamnist", methods=["fedavg", "dp_fedavg", "dp_fedavg_clip"],
                                        seeds=[0], profile="smoke"), tmp_path, progress=False)
    dp_runs, plain = [s for s in seen if s[0]], [s for s in seen if not s[0]]
    assert len(dp_runs) >= 4 and {patience for _, patience, _, _ in dp_runs} == {None}
    assert all(run == cap for _, _, run, cap in dp_runs)  # every round of its cap (3, or the grid's 1)
    assert {patience for _, patience, _, _ in plain} == {1}


def test_clipping_only_dp_classifier_clips_without_noise(monkeypatch):
    """The DP-SGD row's control: its Poisson batches and per-example clipping, sigma 0, no epsilon."""
    from opacus.optimizers import DPOptimizer
    seen = []
    original = DPOptimizer.step

    def spy(self, *a, **k):
        seen.append((self.noise_multiplier, self.max_grad_norm))
        return original(self, *a, **k)
    monkeypatch.setattr(DPOptimizer, "step", spy)
    hospitals, val = [_toy(96, 1), _toy(160, 2)], _toy(seed=3)
    res = train_federated(hospitals, val, num_classes=2, config=FedConfig(rounds=1, batch_size=16, width=8),
                          dp=DPSpec(epsilon=math.inf, accountant="rdp", clip_only=True))
    assert seen and set(seen) == {(0.0, 1.0)} and len(seen) == 6 + 10
    assert res.noise_multipliers == [0.0, 0.0] and res.epsilons == [math.inf, math.inf]


def test_dpfedavg_gan_accounts_whole_hospitals():
    hospitals = [_toy(64, s) for s in range(4)]
    hospitals = [((x.repeat(1, 1, 4, 4)[:, :, :28, :28]), y) for x, y in hospitals]  # 28 px
    cfg = DPFedAvgGANConfig(rounds=3, local_steps=1, batch_size=8, nz=8, ngf=8, ndf=8, epsilon=5.0,
                            client_rate=0.5, accountant="rdp")
    res = train_dpfedavg_gan(hospitals, num_classes=2, config=cfg)
    assert res.epsilon <= 5.0 and res.noise_multiplier > 0
    assert res.epsilon == compute_epsilon(noise_multiplier=res.noise_multiplier, sample_rate=0.5, steps=3,
                                          delta=1e-5, accountant="rdp")
    images, _ = res.generator.sample(4)
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()
    assert_released_like_hfgan(res.generator)


@pytest.mark.parametrize("noised", [False, True])
def test_dpfedavg_gan_step_is_clipped_updates_plus_noise_over_expected_count(monkeypatch, noised):
    """D's round, by hand: every hospital's whole update clipped to S (a hospital moves the sum by at
    most S: the unit epsilon protects), the sum plus N(0, z^2 S^2) per coordinate, divided by the
    expected number of hospitals. Local training is replaced by fixed updates, two inside the bound
    and two far outside it; without noise the step is exact, with it the residual's spread is z S."""
    import dp_accounting
    from dp_accounting import rdp
    import hfgan_core.dpfedavg_gan as dfg
    sizes = (64, 72, 80, 88)
    hospitals = [((x.repeat(1, 1, 4, 4)[:, :, :28, :28]), y) for x, y in (_toy(n, s) for s, n in enumerate(sizes))]
    seen: dict = {}

    def fixed_update(discriminator, generator, data, c):
        i = sizes.index(len(data[1]))
        seen.setdefault("d", discriminator)
        seen.setdefault("start", [p.detach().clone() for p in discriminator.parameters()])
        g = torch.Generator().manual_seed(100 + i)
        update = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in discriminator.parameters()]
        norm = torch.sqrt(sum((u.double() ** 2).sum() for u in update))
        return [u * float((0.3, 0.7, 20.0, 50.0)[i] / norm) for u in update]  # norms 0.3, 0.7, 20, 50
    monkeypatch.setattr(dfg, "_local_update", fixed_update)
    if not noised:
        monkeypatch.setattr(dfg, "calibrate_noise", lambda **k: 0.0)
    S = 1.5
    cfg = DPFedAvgGANConfig(rounds=1, g_steps=0, local_steps=1, batch_size=8, nz=8, ngf=8, ndf=8, epsilon=5.0,
                            client_rate=1.0, update_clip=S, accountant="rdp")
    res = train_dpfedavg_gan(hospitals, num_classes=2, config=cfg)
    # by hand: the four fixed updates (regenerated), each scaled to norm min(norm, S), summed
    total = None
    for i, norm in enumerate((0.3, 0.7, 20.0, 50.0)):
        g = torch.Generator().manual_seed(100 + i)
        u = [torch.randn(p.shape, generator=g).double() for p in seen["start"]]
        length = torch.sqrt(sum((v ** 2).sum() for v in u))
        u = [v / length * min(norm, S) for v in u]
        total = u if total is None else [t + v for t, v in zip(total, u)]
    step = torch.cat([(p.detach().double() - p0.double()).flatten() for p, p0 in zip(seen["d"].parameters(), seen["start"])])
    clipped_sum = torch.cat([t.flatten() for t in total])
    if not noised:
        assert res.noise_multiplier == 0.0
        assert torch.allclose(step, clipped_sum / len(sizes), atol=1e-6)
        return
    residual = step * len(sizes) - clipped_sum  # the noise alone
    assert step.numel() > 2000 and abs(residual.mean()) < 4 * res.noise_multiplier * S / step.numel() ** 0.5
    assert abs(residual.std() / (res.noise_multiplier * S) - 1) < 0.05
    reference = rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(res.noise_multiplier), 1)
    assert 4.9 < reference.get_epsilon(1e-5) <= 5.0  # one full-participation round at the calibrated z


def assert_released_like_hfgan(g: torch.nn.Module) -> None:
    """A generator released the way HF-GAN's are: eval mode with standing BatchNorm statistics, so
    its eval-mode images have the spread of its own train-mode (batch statistics) images. With the
    initial statistics (mean 0, variance 1) an untrained generator's images are near-uniform grey."""
    assert not g.training
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        released = g.sample(512, generator=gen)[0].std()
        g.train()
        batch = g.sample(512, generator=gen)[0].std()
        g.eval()
    assert float(released) == pytest.approx(float(batch), rel=0.15)


def test_the_null_control_releases_its_untrained_generator_like_hfgans():
    from types import SimpleNamespace
    from hfgan_core.train import TrainConfig
    ds = SimpleNamespace(num_classes=2, channels=1, image_size=28)
    assert_released_like_hfgan(runner._null_generator(TrainConfig(), ds, seed=0))


def test_pooled_synthesis_draws_every_class_from_every_generator():
    """With as many generators as classes, plain round-robin would tie generator i to class i."""
    from hfgan_core.synthesis import balanced_labels, images_for_labels

    class Stamp(torch.nn.Module):  # an 'image' that says which generator made it
        nz = 2

        def __init__(self, ident):
            super().__init__()
            self.ident = torch.nn.Parameter(torch.tensor(float(ident)), requires_grad=False)

        def forward(self, z, y):
            return self.ident.expand(len(y), 1, 2, 2).clone()
    gens = [Stamp(i) for i in range(3)]
    labels = balanced_labels(60, 3)
    x, y = images_for_labels(gens, labels, seed=0)
    made_by = x[:, 0, 0, 0].long()
    for c in range(3):
        assert sorted(made_by[y == c].unique().tolist()) == [0, 1, 2]
    assert torch.equal(y, labels)


def test_dp_training_refuses_settings_the_accountant_does_not_cover():
    hospitals, val = [_toy(64, 1)], _toy(seed=3)
    with pytest.raises(ValueError, match="real records only"):
        train_federated(hospitals, val, num_classes=2, config=FedConfig(rounds=1, width=8),
                        synthetic=[_toy(32, 4)], dp=DPSpec(epsilon=3.0))


def test_curve_epsilons_add_rows_for_the_curve_methods_on_the_first_seed(tmp_path):
    """--epsilon 10 --curve-epsilon inf: every private method at 10, every seed; the curve's methods
    also at inf, on the profile's curve seeds (smoke: the first); the rest not at all. The DP
    classifier has no row at inf: without noise it would be FedAvg again. (Made by 2 workers: the
    one-process path makes the notebooks' curves in test_notebooks.)"""
    real_data("pneumoniamnist.npz")
    report = bm.run_benchmark(bm.BenchmarkConfig(dataset="pneumoniamnist",
                                                 methods=["fedavg", "hfgan", "dpfedavg_gan", "dp_fedavg"],
                                                 seeds=[0, 1], profile="smoke", epsilons=[10.0],
                                                 curve_epsilons=[math.inf]), tmp_path, progress=False, workers=2)
    runs = {(r["method"], r["seed"], r["epsilon"]) for r in report["runs"]}
    assert runs == {("fedavg", 0, math.inf), ("fedavg", 1, math.inf), ("hfgan", 0, 10.0), ("hfgan", 1, 10.0),
                    ("dpfedavg_gan", 0, 10.0), ("dpfedavg_gan", 1, 10.0), ("hfgan", 0, math.inf),
                    ("dp_fedavg", 0, 10.0), ("dp_fedavg", 1, 10.0)}
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(r["method"], r["epsilon_target"], r["seeds"]) for r in rows] == [
        ("fedavg", "inf", "2"), ("hfgan", "10.0", "2"), ("hfgan", "inf", "1"), ("dpfedavg_gan", "10.0", "2"),
        ("dp_fedavg", "10.0", "2")]
    by_eps = {r["epsilon_target"]: r for r in rows if r["method"] == "hfgan"}
    assert float(by_eps["10.0"]["gan_epsilon"]) <= 10 and by_eps["inf"]["gan_epsilon"] == "inf"
    assert "privacy–utility curve" in (tmp_path / "table.md").read_text()


def test_class_mix_noise_is_never_shared_between_datasets(tiny):
    """The published class mixes are Gaussian releases of each hospital's counts: the same labels under
    another dataset's name (or another seed) get other noise, so two datasets' releases never share a
    draw (f(D) + σz and g(D') + σz would give f(D) - g(D') exactly); the same run draws the same."""
    cfg = bm.BenchmarkConfig(dataset="tiny", methods=["fedavg"], seeds=[0], profile="smoke")
    parts = [np.arange(0, 75), np.arange(75, 150)]
    mixes = runner.class_mixes(cfg, tiny, parts, 0)
    assert mixes.shape == (2, 3) and np.array_equal(mixes, runner.class_mixes(cfg, tiny, parts, 0))
    for other in (runner.class_mixes(cfg, replace(tiny, name="tiny_twin"), parts, 0),
                  runner.class_mixes(cfg, tiny, parts, 1)):
        assert not np.allclose(mixes, other, atol=1e-6)


def test_per_hospital_accuracy_is_each_hospitals_class_mix(smoke):
    """Recomputed from the published DP class mixes and the definition sum_c pi_ic recall_c; the
    exact per-class counts (sensitivity 1 each) appear nowhere in runs.json."""
    _, report, _ = smoke
    assert "hospital_class_counts" not in report
    sizes, mixes = report["hospitals"]["0"]["sizes"], np.array(report["hospitals"]["0"]["dp_class_mix"])
    assert len(sizes) == 5 and sum(sizes) == 600 and mixes.shape == (5, 2)  # the smoke subset over 5 hospitals
    assert np.allclose(mixes.sum(1), 1, atol=1e-3) and report["class_mix_release"]["epsilon"] < 1
    cfg = bm.BenchmarkConfig(dataset="pneumoniamnist", methods=["fedavg"], seeds=[0], profile="smoke")
    ds = runner._load(cfg, bm.PROFILES["smoke"])
    labels = ds.train.labels
    gan = runner._gan_config(cfg, bm.PROFILES["smoke"], ds, 0, epsilon=math.inf)
    parts = partition(labels, 5, scheme="dirichlet", alpha=0.5, min_size=gan.min_client_size, seed=0)
    exact = np.stack([np.bincount(labels[p], minlength=2) / len(p) for p in parts])
    assert [len(p) for p in parts] == sizes and not np.allclose(mixes, exact, atol=1e-3)  # noised, not exact
    for r in report["runs"]:
        assert len(r["per_hospital_accuracy"]) == 5 and all(0 <= a <= 1 for a in r["per_hospital_accuracy"])
    fed = next(r for r in report["runs"] if r["method"] == "fedavg")
    # one model for all: acc_i = recall_0 + pi_i1 (recall_1 - recall_0), a line in the class mix
    slope, intercept = np.polyfit(mixes[:, 1], fed["per_hospital_accuracy"], 1)
    assert np.allclose(intercept + slope * mixes[:, 1], fed["per_hospital_accuracy"], atol=1e-3)
    assert -1e-3 <= intercept <= 1 + 1e-3 and -1e-3 <= intercept + slope <= 1 + 1e-3  # recall_0 and recall_1 (mixes rounded)


def assert_holds_tuning(tuned: Path, held: Path, setting: str) -> None:
    """The sweep point ``held`` took every tuning choice of ``tuned`` (made in column ``setting``) and
    tried nothing itself: its log is the same entries marked held_from (a fit that tuned would have
    written its own entry), and each row trained at its method's held point."""
    source = json.loads((tuned / "runs.json").read_text())
    report = json.loads((held / "runs.json").read_text())
    assert source["tuning"] and any(e["budget"] > 1 for e in source["tuning"].values())  # a choice was made
    assert report["tuning"] == {key: entry | {"held_from": setting} for key, entry in source["tuning"].items()}
    for run in report["runs"]:
        entry = report["tuning"][f"{run['method']}|{run['epsilon']}"]
        assert run["hyperparameters"] == entry["inherited"] | entry["chosen"]


def test_noniid_sweep_runs_every_setting_on_the_same_seeds(tmp_path, monkeypatch):
    """python -m hfgan_core noniid (smoke, two of its four settings for time, rows made by 2 workers):
    one benchmark per setting with the four methods, a table whose HF-GAN delta is its accuracy minus
    FedAvg's in that setting, and a figure; resumed, nothing is made again."""
    real_data("pneumoniamnist.npz")
    from hfgan_core.__main__ import main
    import hfgan_core.sweeps as sw
    assert sw.SETTINGS == (("dirichlet", 0.1), ("dirichlet", 0.5), ("dirichlet", 1.0), ("iid", None))
    monkeypatch.setitem(sw.run_noniid.__kwdefaults__, "settings", (("dirichlet", 0.1), ("iid", None)))
    assert main(["noniid", "--dataset", "pneumoniamnist", "--profile", "smoke", "--seeds", "0", "--out",
                 str(tmp_path), "--no-progress", "--workers", "2"]) == 0
    root = tmp_path / "pneumoniamnist" / "noniid"
    report = json.loads((root / "noniid.json").read_text())
    settings = {r["setting"] for r in report["rows"]}
    assert settings == {"α = 0.1", "IID"}
    for s in settings:
        rows = {r["method"]: r for r in report["rows"] if r["setting"] == s}
        assert set(rows) == set(sw.NONIID_METHODS)
        assert rows["hfgan"]["delta_vs_fedavg"] == pytest.approx(rows["hfgan"]["accuracy"] - rows["fedavg"]["accuracy"])
    for sub in ("alpha0.1", "iid"):
        cfg = json.loads((root / sub / "runs.json").read_text())["config"]
        assert cfg["seeds"] == [0] and cfg["methods"] == sw.NONIID_METHODS
    assert_holds_tuning(root / "alpha0.1", root / "iid", "α = 0.1")  # no headline setting: the first point's
    assert "HF-GAN − null images" in (root / "noniid.md").read_text()
    assert "choices made in column α = 0.1" in (root / "noniid.md").read_text()
    assert (root / "noniid.png").stat().st_size > 10_000
    before = (root / "noniid.md").read_text()
    assert main(["noniid", "--dataset", "pneumoniamnist", "--profile", "smoke", "--seeds", "0", "--out",
                 str(tmp_path), "--no-progress", "--resume"]) == 0  # a finished sweep, resumed: nothing to redo
    for sub in ("alpha0.1", "iid"):
        calls = json.loads((root / sub / "runs.json").read_text())["invocations"]
        jobs, calls = [c for c in calls if c.get("worker")], [c for c in calls if not c.get("worker")]
        assert len(jobs) == len(sw.NONIID_METHODS)  # one job per method (one seed, HF-GAN's block is one row)
        assert len(calls) == 2 and calls[1]["units_made"] == 0 and calls[1]["units_reused"] >= len(sw.NONIID_METHODS)
    assert (root / "noniid.md").read_text() == before


def test_sweeps_resumed_start_from_the_headline_run(tmp_path, monkeypatch):
    """With resume, the sweep points with the headline's settings (non-IID alpha 0.5; the profile's
    own ratio) take the headline run's finished units (nothing made again, the same rows, only
    their own methods' tuning), the other ratios its finished GANs (none trained again); a
    headline of other code is not used."""
    real_data("pneumoniamnist.npz")
    import hfgan_core.sweeps as sw
    import hfgan_core.train as train_module
    methods = sw.NONIID_METHODS + ["fedavg_steps"]  # every method of both sweeps
    config = bm.BenchmarkConfig(dataset="pneumoniamnist", methods=methods, seeds=[0], profile="smoke")
    headline = bm.run_benchmark(config, tmp_path / "pneumoniamnist", progress=False)
    accuracy = {r["method"]: r["accuracy"] for r in headline["runs"]}

    def no_training(*args, **kwargs):
        raise AssertionError("a GAN the headline run had finished was trained again")
    monkeypatch.setattr(train_module, "train", no_training)
    rows = sw.run_noniid("pneumoniamnist", tmp_path, profile="smoke", seeds=[0], settings=(("dirichlet", 0.5),),
                         resume=True)
    point = json.loads((tmp_path / "pneumoniamnist" / "noniid" / "alpha0.5" / "runs.json").read_text())
    assert [c["units_made"] for c in point["invocations"]] == [0]
    assert {r["method"]: r["accuracy"] for r in rows} == {m: accuracy[m] for m in sw.NONIID_METHODS}
    assert {key.split("|")[0] for key in point["tuning"]} == set(sw.NONIID_METHODS)
    own = bm.PROFILES["smoke"].synthetic_ratio
    rows = sw.run_ratio("pneumoniamnist", tmp_path, profile="smoke", seeds=[0], ratios=(own, 0.5), resume=True)
    point = json.loads((tmp_path / "pneumoniamnist" / "ratio" / f"ratio{own:g}" / "runs.json").read_text())
    assert [c["units_made"] for c in point["invocations"]] == [0]
    assert {r["method"]: r["accuracy"] for r in rows if r["ratio"] == own} == {m: accuracy[m] for m in sw.RATIO_METHODS}
    assert (tmp_path / "pneumoniamnist" / "ratio" / "gan_runs" / "hfgan-seed0-eps10.0" / "generators.pt").exists()
    root = tmp_path / "pneumoniamnist" / "ratio"
    assert_holds_tuning(root / f"ratio{own:g}", root / "ratio0.5", f"{own:g}")  # tuned by the headline, held
    stamp = tmp_path / "pneumoniamnist" / "units" / "stamp.json"  # the headline made by other code: left alone
    stamp.write_text(json.dumps(json.loads(stamp.read_text()) | {"code": "hfgan_core sha256 other"}))
    sw._seed_units(tmp_path / "pneumoniamnist", tmp_path / "fresh", config)
    assert not (tmp_path / "fresh").exists()


def test_ratio_sweep_trains_each_gan_once_and_matches_the_controls(tmp_path, monkeypatch):
    """python -m hfgan_core ratio (smoke, two ratios): the HF-GAN of a seed trains once and is reused
    by the second ratio; at each ratio the null-image control trains on as many images as HF-GAN
    and the equal-steps control takes (about) HF-GAN's steps."""
    real_data("pneumoniamnist.npz")
    import hfgan_core.sweeps as sw
    from hfgan_core.__main__ import main
    import hfgan_core.train as train_module
    trained = []
    original = train_module.train
    monkeypatch.setattr(train_module, "train", lambda *a, **k: trained.append(a[1]) or original(*a, **k))
    monkeypatch.setitem(sw.run_ratio.__kwdefaults__, "ratios", (0.5, 2.0))  # two of the four, for time
    assert main(["ratio", "--dataset", "pneumoniamnist", "--profile", "smoke", "--seeds", "0", "--out",
                 str(tmp_path), "--no-progress"]) == 0
    assert len(trained) == 1  # one GAN (seed 0, eps 10) for both ratios
    root = tmp_path / "pneumoniamnist" / "ratio"
    for ratio in ("0.5", "2"):
        runs = {r["method"]: r for r in json.loads((root / f"ratio{ratio}" / "runs.json").read_text())["runs"]}
        steps = {m: epoch_steps(runs[m]) for m in runs}
        assert steps["fedavg_null"] == steps["hfgan"] > steps["fedavg"]
        assert abs(steps["fedavg_steps"] - steps["hfgan"]) <= 5
    assert "synthetic images per real image" in (root / "ratio.md").read_text() and (root / "ratio.png").exists()


def test_ratio_sweep_on_a_machine_without_the_headline_generators_uses_one_training(tmp_path, monkeypatch):
    """The headline run's generators are not committed. A ratio sweep started from its units on
    another machine trains the GAN again into its cache; then every ratio's HF-GAN rows, the
    headline ratio's included, must come from that training, not some from the headline's."""
    real_data("pneumoniamnist.npz")
    import hfgan_core.sweeps as sw
    headline = tmp_path / "pneumoniamnist"
    bm.run_benchmark(bm.BenchmarkConfig(dataset="pneumoniamnist", methods=sw.RATIO_METHODS, seeds=[0],
                                        profile="smoke"), headline, progress=False)
    for gens in headline.glob("gan_runs/*/generators.pt"):
        gens.unlink()

    def other_machine(*args, **kwargs):  # retrained weights that differ from the headline's
        gens, info = trained_generators(*args, **kwargs)
        with torch.no_grad():
            next(gens[0].parameters()).add_(1e-6)
        return gens, info
    monkeypatch.setattr(runner, "trained_generators", other_machine)
    sw.run_ratio("pneumoniamnist", profile="smoke", seeds=[0], out=tmp_path, ratios=(0.2, 0.5), resume=True)
    names = {r["generators"] for ratio in ("0.2", "0.5") for r in
             json.loads((tmp_path / "pneumoniamnist" / "ratio" / f"ratio{ratio}" / "runs.json").read_text())["runs"]
             if r["method"] == "hfgan"}
    assert len(names) == 1


def test_a_gan_block_never_mixes_two_trainings_of_its_gan(tmp_path, monkeypatch):
    """A session ends after HF-GAN's first row; the next, on a machine without the generators, trains
    the GAN again. If the new generators differ (another machine's arithmetic), the finished row and
    the judgement are made again from them; every row of the block then names the same generators."""
    real_data("pneumoniamnist.npz")
    config = bm.BenchmarkConfig(dataset="pneumoniamnist", methods=["hfgan", "hfgan_shared"], seeds=[0],
                                profile="smoke")
    put = Units.put

    def put_then_stop(self, key, unit, array=None):
        put(self, key, unit, array)
        if key[:2] == ("row", "hfgan"):
            raise KeyboardInterrupt
    monkeypatch.setattr(Units, "put", put_then_stop)
    with pytest.raises(KeyboardInterrupt):
        bm.run_benchmark(config, tmp_path, progress=False)
    monkeypatch.setattr(Units, "put", put)
    first = json.loads((tmp_path / "units" / "row-hfgan-0-10.0.json").read_text())["generators"]
    (tmp_path / "gan_runs" / "hfgan-seed0-eps10.0" / "generators.pt").unlink()  # not carried to the new machine

    def other_arithmetic(*args, **kwargs):
        gens, info = trained_generators(*args, **kwargs)
        with torch.no_grad():
            next(gens[0].parameters()).add_(1e-6)
        return gens, info
    monkeypatch.setattr(runner, "trained_generators", other_arithmetic)
    report = bm.run_benchmark(config, tmp_path, progress=False, resume=True)
    names = {r["generators"] for r in report["runs"]} | {q["generators"] for q in report["gan_quality"]}
    assert len(names) == 1 and first not in names
    assert report["invocations"][1]["units_made"] >= 3  # both rows and the judgement, made again


def test_a_resumed_run_needs_the_extractor_it_was_scored_with_before_training_one(tmp_path, tiny, monkeypatch):
    """Its file missing (a fresh machine without it), a resumed run stops at once, not after training
    an extractor that could not match; the very file is taken."""
    from hfgan_core import extractor as ex
    _, info = ex.load_or_train_extractor(tiny, epochs=1, cache=tmp_path / "x")
    monkeypatch.setattr(ex, "train_classifier", lambda *a, **kw: pytest.fail("trained an extractor"))
    ex.load_or_train_extractor(tiny, epochs=1, cache=tmp_path / "x", expect_sha256=info["weights_sha256"])
    for cache, what in ((tmp_path / "elsewhere", "missing"), (tmp_path / "x", "another file")):
        with pytest.raises(UserError, match=f"is {what}"):
            ex.load_or_train_extractor(tiny, epochs=1, cache=cache, expect_sha256="0" * 64)


def test_a_resumed_run_refuses_another_extractor(tmp_path, tiny):
    """The runner records the extractor its first units are scored with; resumed, it takes that file
    again, and refuses the file once another (retrained elsewhere, say) has replaced it."""
    units, cache = Units(tmp_path / "units", {"code": "x"}, resume=False), tmp_path / "extractors"
    _, info = runner._extractor(units, tiny, epochs=1, device="cpu", cache=cache)
    assert units.get(("extractor",)) == {"weights_sha256": info["weights_sha256"]}
    _, again = runner._extractor(units, tiny, epochs=1, device="cpu", cache=cache)
    assert again["weights_sha256"] == info["weights_sha256"]
    weights = next(cache.glob("*.pt"))
    weights.write_bytes(weights.read_bytes() + b"another file")
    with pytest.raises(UserError, match="is another file than the extractor this run's finished units were scored"):
        runner._extractor(units, tiny, epochs=1, device="cpu", cache=cache)


def test_a_cached_gan_run_is_reused_only_under_its_code_and_data(tmp_path, tiny):
    from conftest import tiny_config
    cfg, ds = tiny_config(rounds=2, epsilon=math.inf, data_dir=str(tmp_path), synthetic_per_class=4), tiny
    stamp = {"code": "hfgan_core sha256 a", "data": "d sha256 1"}
    _, made = trained_generators(cfg, tmp_path / "run", ds, resume=True, progress=False, stamp=stamp)
    _, again = trained_generators(cfg, tmp_path / "run", ds, resume=True, progress=False, stamp=stamp)
    _, other = trained_generators(cfg, tmp_path / "run", ds, resume=True, progress=False,
                                  stamp=stamp | {"code": "hfgan_core sha256 b"})
    assert (made["resumed"], again["resumed"], other["resumed"]) == ("none", "finished", "none")


def test_one_collapsed_hospital_model_marks_the_local_row():
    from hfgan_core.benchmark.tables import _collapsed
    assert _collapsed({"one_class_models": 2, "predicted_classes": 1.6})  # 2 of 5 local models collapsed
    assert not _collapsed({"one_class_models": 0, "predicted_classes": 2.0})
    assert _collapsed({"predicted_classes": 1})  # runs from before the count was kept
    assert _collapsed({"predicted_classes": 1.8})  # a mean over 5 local models below 2: one of them collapsed
    assert not _collapsed({"predicted_classes": 2.0})


def test_old_runs_count_their_collapsed_models_from_the_saved_probabilities(tmp_path):
    """runs.json from before one_class_models was kept: the tables count it from probas.npz. Local
    only's two models predict 3 classes and 1 (a mean of 2.0, which the mean alone cannot tell
    from two models predicting 2 each)."""
    from hfgan_core.benchmark.tables import _collapsed, load_runs
    eye = np.eye(3)
    both = np.stack([eye[[0, 1, 2, 0]], eye[[1, 1, 1, 1]]])  # (models, N, K): predictions {0, 1, 2} and {1}
    np.savez(tmp_path / "probas.npz", y_test=np.array([0, 1, 2, 0]), **{"local|0|inf": both,
                                                                       "fedavg|0|inf": both[:1]})
    (tmp_path / "runs.json").write_text(json.dumps({"config": {"epsilons": ["inf"]}, "runs": [
        {"method": "local", "seed": 0, "epsilon": "inf", "predicted_classes": 2.0},
        {"method": "fedavg", "seed": 0, "epsilon": "inf", "predicted_classes": 3.0}]}))
    local, fedavg = load_runs(tmp_path)["runs"]
    assert (local["one_class_models"], fedavg["one_class_models"]) == (1, 0)
    assert _collapsed(local) and not _collapsed(fedavg)
