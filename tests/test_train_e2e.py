"""End to end on real PneumoniaMNIST: learning happens, runs are reproducible, resume is exact,
and the command line fails cleanly."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_clear_line, real_data
from hfgan_core.data import load_dataset
from hfgan_core.classifier import train_classifier
from hfgan_core.metrics import extract_features, frechet_distance
from hfgan_core.synthesis import synthesize
from hfgan_core.models import Generator
from hfgan_core import train as train_module
from hfgan_core.train import TrainConfig, train

def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pneumonia():
    real_data("pneumoniamnist.npz")
    return load_dataset("pneumoniamnist")


def small(**kw) -> TrainConfig:
    base = dict(dataset="pneumoniamnist", clients=3, rounds=6, d_steps=1, batch_size=32, checkpoint_every=2,
                simulation_noise=True,  # reproducible: the tests compare runs draw for draw
                accountant="rdp", synthetic_per_class=10)
    return TrainConfig(**(base | kw))


def test_training_lowers_in_domain_frechet_distance(pneumonia, tmp_path):
    """Without DP, a short run: the released generators move toward the real images in the
    features of a CNN trained on the real training split."""
    cfg = small(rounds=150, epsilon=float("inf"), g_ema=0.0, checkpoint_every=150, synthetic_per_class=10)
    torch.manual_seed(cfg.seed)
    untrained = [Generator(num_classes=2, channels=1, image_size=28, nz=cfg.nz, ngf=cfg.ngf) for _ in range(3)]
    run = train(cfg, tmp_path / "run", progress=False, dataset=pneumonia)
    extractor, _ = train_classifier(*pneumonia.train.tensors(), num_classes=2, epochs=1)
    real = extract_features(extractor, pneumonia.val.tensors()[0])

    def fd(generators):
        return frechet_distance(extract_features(extractor, synthesize(generators, 100, 2)[0]), real)
    before, after = fd(untrained), fd([c.sampler for c in run.clients])
    assert after < 0.6 * before, (before, after)
    for name in ("samples_client0.png", "generators.pt", "synthetic.npz", "synthetic.json"):
        assert (tmp_path / "run" / name).exists()


def test_dp_run_accounts_every_step(pneumonia, tmp_path):
    run = train(small(rounds=8, epsilon=10, accountant="prv"), tmp_path / "run", progress=False, dataset=pneumonia)
    privacy = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert privacy["accountant"] == "prv" and privacy["delta"] == 1e-5
    assert all(v["steps"] == 8 for v in privacy["clients"].values())
    assert 9 < privacy["max_epsilon"] <= 10  # calibrated to the target, never over it
    assert all(v["epsilon_replace_one"] > v["epsilon"] for v in privacy["clients"].values())  # sensitivity 2C
    assert privacy["max_epsilon_replace_one"] == max(v["epsilon_replace_one"] for v in privacy["clients"].values())
    lines = _metrics(tmp_path / "run")
    # nothing un-noised about the data per round (a round's wall time follows the Poisson batch sizes)
    assert all(set(line) == {"round", "selected", "d_loss_fake", "g_loss", "steps", "epsilon"} for line in lines)
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    assert timing["rounds_completed"] == 8
    for cid, budget in privacy["clients"].items():  # epsilon every round, rising to what privacy.json reports
        trajectory = [line["epsilon"][cid] for line in lines]
        assert len(trajectory) == 8 and trajectory == sorted(trajectory) and 0 < trajectory[0]
        assert trajectory[-1] == budget["epsilon"]
    for c in run.clients:
        assert c.budget.noise_multiplier > 0 and c.budget.sample_rate == 32 / c.n_examples


def test_same_seed_same_metrics(pneumonia, tmp_path):
    train(small(), tmp_path / "a", progress=False, dataset=pneumonia)
    train(small(), tmp_path / "b", progress=False, dataset=pneumonia)
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert len(a) == 6 and a == b
    assert "epsilon" in a[1] and set(a[1]["epsilon"]) == {"0", "1", "2"}
    c = train(small(seed=1), tmp_path / "c", progress=False, dataset=pneumonia)
    assert _metrics(tmp_path / "c") != a and c.round == 6


class _Clock:
    """A stand-in for ``time`` in ``hfgan_core.train``: one second per reading, so every round's
    wall time is exactly 1 s and ``train_s`` counts the rounds that were timed."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_resume_reaches_the_same_metrics(pneumonia, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "time", _Clock())
    full = train(small(), tmp_path / "full", progress=False, dataset=pneumonia)
    part = train(small(), tmp_path / "part", progress=False, stop_after=3, dataset=pneumonia)
    assert part.round == 3 and len(_metrics(tmp_path / "part")) == 3
    resumed = train(small(), tmp_path / "part", resume=True, progress=False, dataset=pneumonia)
    assert resumed.round == 6
    assert _metrics(tmp_path / "part") == _metrics(tmp_path / "full")
    for a, b in zip(full.discriminator.parameters(), resumed.discriminator.parameters()):
        assert torch.equal(a, b)
    assert (json.loads((tmp_path / "part" / "privacy.json").read_text())["clients"]
            == json.loads((tmp_path / "full" / "privacy.json").read_text())["clients"])
    # the resumed run's time adds the first part's (3 rounds) to its own (3 rounds): 6 s, as the full run
    assert json.loads((tmp_path / "part" / "timing.json").read_text())["train_s"] == 6.0
    assert json.loads((tmp_path / "full" / "timing.json").read_text())["train_s"] == 6.0


def test_fixed_sigma_stops_before_exceeding_target(pneumonia, tmp_path, capsys):
    run = train(small(noise_multiplier=1.5, epsilon=3.0, rounds=40), tmp_path / "r", progress=False,
                dataset=pneumonia)
    assert 0 < run.round < 40
    out = capsys.readouterr()
    assert f"stopped: round {run.round + 1}: client" in out.out + out.err
    assert "would exceed epsilon=3.0" in out.out + out.err
    privacy = json.loads((tmp_path / "r" / "privacy.json").read_text())
    assert privacy["max_epsilon"] <= 3.0 and privacy["rounds_completed"] == run.round


def test_fixed_sigma_refusal_spares_hospitals_that_are_never_selected(tiny):
    """A fixed sigma that cannot afford one round is refused, but a hospital the schedule never picks
    (client fraction < 1) plans no steps and is no reason to refuse the run."""
    from conftest import tiny_config
    from hfgan_core.errors import UserError
    from hfgan_core.train import setup
    run = setup(tiny_config(noise_multiplier=5.0, epsilon=10.0, client_fraction=0.34, rounds=1), tiny)
    from hfgan_core import server as sv
    assert sorted(sv.times_selected(run.schedule, 3)) == [0, 0, 1]  # one hospital of three takes part
    with pytest.raises(UserError, match="spends more than --epsilon 10.0 within one round"):
        setup(tiny_config(noise_multiplier=0.05, epsilon=10.0, client_fraction=0.34, rounds=1), tiny)


def test_no_dp_run_records_no_epsilon(pneumonia, tmp_path):
    run = train(small(epsilon=float("inf"), rounds=2), tmp_path / "r", progress=False, dataset=pneumonia)
    assert all(c.budget is None for c in run.clients)
    assert "epsilon" not in _metrics(tmp_path / "r")[-1]
    assert json.loads((tmp_path / "r" / "privacy.json").read_text())["accountant"] is None


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "hfgan_core", "train", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["--epsilon", "-1"], "--epsilon must be positive"),
    (["--delta", "2"], "--delta must lie in (0, 1)"),
    (["--clients", "0"], "--clients must be at least 1"),
    (["--partition", "weird"], "unknown partition"),
    (["--batch-size", "4000"], "fewer than --batch-size"),
    (["--dataset", "nosuchset"], "nosuchset.npz not found"),
    (["--device", "cuda"], "has no CUDA GPU; use --device cpu") if not torch.cuda.is_available()
    else (["--rounds", "0"], "--rounds must be at least 1"),
    (["--resume"], "no checkpoint.pt"),
    (["--engine", "fast"], "--engine must be batched or loop"),
    (["--loss", "wgan"], "--loss must be one of"),
    (["--fakes", "0"], "--fakes must be at least 1"),
    (["--device", "gpu"], "--device must be cpu, cuda, cuda:<index> or auto (got 'gpu')"),
    (["--lr-d", "-1"], "--lr-d and --lr-g must be positive"),
    (["--beta1", "1.5"], "--beta1, --beta1-d and --beta2 must lie in [0, 1)"),
    (["--g-ema", "1"], "--g-ema must lie in [0, 1)"),
    (["--epsilon", "inf", "--noise-multiplier", "1"], "a fixed sigma needs a finite --epsilon"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--out", "FILE/sub"], "which is a file; choose another --out"),
    (["--nz", "0", "--epsilon", "inf"], "--nz, --ngf and --ndf must be at least 1"),
    (["--synthetic-per-class", "-5"], "--synthetic-per-class must be >= 0"),
    (["--noise-multiplier", "0.01", "--epsilon", "1"], "spends more than --epsilon 1.0 within one round"),
    (["--epsilon", "1e-7"], "is out of reach"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, cli, args, message):
    real_data("pneumoniamnist.npz")
    (tmp_path / "FILE").write_text("not a folder")
    args = [a.replace("FILE", str(tmp_path / "FILE"), 1) if a.startswith("FILE") else a for a in args]
    proc = cli("train", "--out", tmp_path / "run", "--rounds", "1", *args)
    assert_one_clear_line(proc, message)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing half-written


def test_cli_resume_keeps_the_saved_settings_or_refuses(tmp_path, cli):
    """--resume continues the saved run with its own settings: a flag asking for others is refused by
    name (it was silently ignored: asked for epsilon 1, got 10); where the data lives may change; an
    unreadable config.json or checkpoint.pt is one line too."""
    real_data("pneumoniamnist.npz")
    run = ["--out", tmp_path / "r", "--no-progress"]
    small_run = ["--rounds", "2", "--clients", "2", "--batch-size", "16", "--ndf", "8", "--ngf", "8", "--nz", "16",
                 "--synthetic-per-class", "0", "--accountant", "rdp"]
    assert cli("train", *run, *small_run, "--stop-after", "1").returncode == 0
    proc = cli("train", *run, "--resume", "--epsilon", "1", "--dataset", "retinamnist")
    assert_one_clear_line(proc, "asks for other --dataset (retinamnist; saved: pneumoniamnist), --epsilon (1.0; saved: 10.0)")
    assert len(_metrics(tmp_path / "r")) == 1
    for broken, message in (("config.json", "config.json is missing or unreadable"),
                            ("checkpoint.pt", "checkpoint.pt is unreadable")):
        copy = tmp_path / f"broken-{broken}"
        shutil.copytree(tmp_path / "r", copy)
        (copy / broken).write_bytes((copy / broken).read_bytes()[:100])
        assert_one_clear_line(cli("train", "--out", copy, "--resume", "--no-progress"), message)
    data = real_data("pneumoniamnist.npz").parent
    proc = cli("train", *run, "--resume", *small_run, "--data-dir", data)  # the same settings, data named elsewhere
    assert proc.returncode == 0 and "done: 2 rounds" in proc.stdout


def test_cli_runs_and_reports(tmp_path):
    real_data("pneumoniamnist.npz")
    proc = _cli("--out", str(tmp_path / "run"), "--rounds", "2", "--clients", "2", "--batch-size", "16",
                "--accountant", "rdp", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "done: 2 rounds, max epsilon" in proc.stdout
    for name in ("config.json", "metrics.jsonl", "privacy.json", "checkpoint.pt", "samples_client1.png"):
        assert (tmp_path / "run" / name).exists()
