"""HF-GAN on Flower: the simulation runtime gives the in-process reference's numbers bit for bit,
survives dropouts without charging absent hospitals, and a hospital refuses to go past its epsilon."""
from __future__ import annotations

import importlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_clear_line, tiny_config, write_npz
from hfgan_core import server as sv
from hfgan_core.privacy import compute_epsilon

importlib.import_module("flwr")  # a pinned dependency: a broken install fails here, never skips


def _config(data: Path, **kw):
    # the reference loop (the engine a ClientApp runs per hospital), 3 hospitals, one thread
    return tiny_config(**(dict(data_dir=str(data), rounds=3, d_steps=2, epsilon=10.0, simulation_noise=True,
                              engine="loop", synthetic_per_class=0) | kw))


@pytest.fixture
def data(tmp_path):
    write_npz(tmp_path / "data" / "tiny.npz", n=(120, 12, 12))
    return tmp_path / "data"


@pytest.mark.parametrize("in_files", [False, True], ids=["generators-in-context", "generators-in-state-dir"])
def test_flower_simulation_equals_the_in_process_run(data, tmp_path, in_files):
    """Same seed, simulation noise: identical metrics.jsonl, privacy.json and sample grids, with a
    client fraction below 1 (the schedule leaves hospitals out) and two D steps per round, whether
    the hospitals keep their generators in their contexts or in a state folder."""
    from hfgan_core.__main__ import main
    from hfgan_core.train import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each ClientApp computes with one thread; so does the reference here
    try:
        train(_config(data, client_fraction=0.67), tmp_path / "inproc", progress=False)
    finally:
        torch.set_num_threads(threads)
    flags = ["--dataset", "tiny", "--data-dir", str(data), "--clients", "3", "--partition", "quantity", "--alpha", "2",
             "--min-client-size", "20", "--batch-size", "8", "--ndf", "8", "--ngf", "8", "--nz", "16",
             "--accountant", "rdp", "--rounds", "3", "--d-steps", "2", "--epsilon", "10", "--simulation-noise",
             "--engine", "loop", "--synthetic-per-class", "0", "--client-fraction", "0.67"]
    state_dir = tmp_path / "hospital-disks"  # the generators wait in files between messages
    extra = ["--state-dir", str(state_dir)] if in_files else []
    assert main(["flower-sim", *flags, "--out", str(tmp_path / "flower"), *extra]) == 0
    if in_files:
        # at release each hospital removed its generator's copies; its ledger (steps spent) stays on its disk
        left = sorted(p.name for p in state_dir.iterdir())
        assert len(left) == 3 and all(name.endswith("-ledger.json") for name in left), left
    a, b = tmp_path / "inproc", tmp_path / "flower"
    lines = (a / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and any(len(json.loads(line)["selected"]) < 3 for line in lines)
    for name in ("metrics.jsonl", "privacy.json", "samples_client0.png", "samples_client2.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert json.loads((b / "config.json").read_text())["client_sizes"] == \
        json.loads((a / "config.json").read_text())["client_sizes"]


def test_dropouts_skip_hospitals_and_never_charge_them(data, tmp_path):
    """Half the messages fail: the run completes, each round lists who dropped, and each
    hospital's accountant counts exactly the uploads it made -- recomputed here from the same
    per-message draws -- and stops at the largest step count within its epsilon (brute force
    over the accountant), refusing the rest, whatever the server asks."""
    from hfgan_core.flower.simulation import run_flower_simulation
    rate, sigma, eps = 0.5, 0.9, 6.0
    cfg = _config(data, rounds=4, noise_multiplier=sigma, epsilon=eps)
    privacy = run_flower_simulation(cfg, tmp_path / "run", dropout=rate)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == cfg.rounds and privacy["rounds_completed"] == cfg.rounds
    assert any(line.get("dropped") for line in lines)

    def answers(r: int, step: int, cid: int) -> bool:
        return np.random.default_rng([cfg.seed, 71, r, step, cid]).random() >= rate
    schedule = sv.selection_schedule(cfg.seed, cfg.clients, cfg.rounds, fraction=cfg.client_fraction)
    limits, refused = [], set()  # refused: (round, hospital) whose message arrived once its budget was spent
    for cid in range(cfg.clients):
        entry = privacy["clients"][str(cid)]
        q = entry["sample_rate"]
        # a linear scan up to the first count past eps (epsilon grows with the count); each call ~0.1 s
        allowed = next(k for k in itertools.count(1) if compute_epsilon(
            noise_multiplier=sigma, sample_rate=q, steps=k, delta=cfg.delta, accountant="rdp") > eps) - 1
        made = sum(answers(r, s, cid) for r, chosen in enumerate(schedule) if cid in chosen for s in range(cfg.d_steps))
        arrived = [r for r, chosen in enumerate(schedule) if cid in chosen for s in range(cfg.d_steps) if answers(r, s, cid)]
        refused |= {(r, cid) for r in arrived[allowed:]}
        assert entry["steps"] == min(made, allowed)
        assert entry["epsilon"] <= eps
        limits.append(made > allowed)
    assert any(limits) and not all(limits)  # one hospital hit its epsilon and refused, another only dropped
    for r, line in enumerate(lines):  # listed when any message of the round failed: its uploads, or the
        # next round's first message, which carries its G steps; or when it refused an upload (budget spent)
        failed = {cid for cid in schedule[r]
                  if not all(answers(r, s, cid) for s in range(cfg.d_steps)) or not answers(r + 1, 0, cid)}
        assert set(line.get("dropped", [])) == failed | {cid for rr, cid in refused if rr == r}


def test_generator_state_survives_a_new_process_from_context_or_state_dir(data, tmp_path, monkeypatch):
    """A process that never saw the hospital rebuilds it from its context alone (G_i in the context,
    or in the node's state-dir): the same weights, EMA, Adam moments, random stream and DP label
    mix; a state file from another version of the run is refused."""
    from flwr.app import Context, RecordDict

    from hfgan_core import client as cl
    from hfgan_core.flower import client_app as ca
    from hfgan_core.train import hospital_state
    monkeypatch.delenv(ca.STATE_DIR_ENV, raising=False)
    # a DP label mix drawn from OS entropy: a rebuilt hospital would draw another one, which it must not use
    cfg = _config(data, fake_labels="histogram", simulation_noise=False)
    for node_config in ({"partition-id": 1}, {"partition-id": 1, "state-dir": str(tmp_path / "disk")}):
        ctx = Context(run_id=7, node_id=11, node_config=node_config, state=RecordDict(), run_config={})
        h = ca._hospital(cfg, ctx)
        d, _ = ca._discriminator(cfg, h, ca.tensors_record(list(ca.build_discriminator(
            cfg, num_classes=h.generator.num_classes, channels=h.images.shape[1],
            image_size=h.images.shape[-1]).state_dict().values())))
        cl.generator_step(h, d, batch_size=cfg.batch_size, objective=cfg.objective)  # Adam moments are non-zero
        ca._save(h, ctx)
        before = hospital_state(h)
        ca._LIVE.clear()  # a fresh process
        again = ca._hospital(cfg, ctx)
        assert again is not h
        after = hospital_state(again)
        for key in ("generator", "ema"):
            for name, t in before[key].items():
                assert torch.equal(t, after[key][name]), (key, name)
        moments = [v for st in after["g_optimizer"]["state"].values() for v in st.values() if torch.is_tensor(v)]
        assert moments and all(torch.equal(a, b) for a, b in zip(
            [v for st in before["g_optimizer"]["state"].values() for v in st.values() if torch.is_tensor(v)], moments))
        assert torch.equal(h.rng.get_state(), again.rng.get_state())
        assert torch.equal(h.fake_label_probs, again.fake_label_probs)  # the one release its accountant counts
        if "state-dir" in node_config:
            path = Path(str(ctx.state["generator"]["file"]))
            assert path.parent == tmp_path / "disk" and "state" not in ctx.state["generator"]
            current = path.read_bytes()
            ca._save(again, ctx)  # the next save goes to the other file: the current one is never rewritten
            assert Path(str(ctx.state["generator"]["file"])) != path and path.read_bytes() == current
            path = Path(str(ctx.state["generator"]["file"]))
            saved = ca.unblob(path.read_bytes())
            path.write_bytes(ca.blob(saved | {"version": saved["version"] + 1}))  # another run's (or a stale) copy
            ca._LIVE.clear()
            with pytest.raises(RuntimeError, match="another version"):
                ca._hospital(cfg, ctx)


def test_a_hospital_holds_the_server_to_the_terms_it_registered_with(data, tmp_path, monkeypatch):
    """The server cannot change a hospital's privacy mid-run: a message whose settings differ from
    the registered ones (ε = ∞, a larger batch, seed-derived noise) is refused, as is any message to a
    hospital whose state is gone (a restarted node would count its spent steps from zero). A
    deployed hospital takes part without DP, with seed-derived noise or above its max-epsilon only
    if its own node config says so, and keeps a durable ledger in its state-dir."""
    from dataclasses import replace

    from flwr.app import Context, RecordDict

    from hfgan_core.flower import client_app as ca
    monkeypatch.delenv(ca.STATE_DIR_ENV, raising=False)

    def context(**node):
        return Context(run_id=3, node_id=5, node_config={"partition-id": 1, **node}, state=RecordDict(), run_config={})
    cfg = _config(data, simulation_noise=False)
    ctx = context()
    ca._terms(cfg, ctx, first=True)
    ca._terms(cfg, ctx, first=False)  # the same settings: answered
    for changed in (dict(epsilon=float("inf")), dict(batch_size=16), dict(simulation_noise=True)):
        with pytest.raises(RuntimeError, match="differ from those it registered with"):
            ca._terms(replace(cfg, **changed), ctx, first=False)
    with pytest.raises(RuntimeError, match="its state .* is gone"):
        ca._terms(cfg, context(), first=False)  # a train.step reaching a node that lost its context
    deployed = {"data-file": "/hospital/own.npz"}
    for asked, consent, match in ((dict(epsilon=float("inf")), {"allow-no-dp": True}, "does not allow it"),
                                  (dict(simulation_noise=True), {"allow-simulation-noise": True}, "does not allow it"),
                                  (dict(epsilon=10.0), {"max-epsilon": 20.0}, "above its max-epsilon")):
        with pytest.raises(RuntimeError, match=match):
            ca._terms(replace(cfg, **asked), context(**deployed, **({"max-epsilon": 5.0} if "max-epsilon" in consent
                                                                        else {})), first=True)
        ca._terms(replace(cfg, **asked), context(**deployed, **consent), first=True)  # with its consent
    # the ledger, durable in the state-dir; a second registration of the run there is refused
    ctx = context(**{"state-dir": str(tmp_path / "disk")})
    ca._terms(cfg, ctx, first=True)
    h = ca._hospital(cfg, ctx)
    h.budget.spend(3)
    ca._save(h, ctx)
    ledger = json.loads(Path(ca._ledger_file(ctx, 1)).read_text())
    assert ledger["steps"] == 3 and ledger["epsilon"] == h.budget.epsilon
    with pytest.raises(RuntimeError, match="holds a ledger of this run already"):
        ca._terms(cfg, context(**{"state-dir": str(tmp_path / "disk")}), first=True)


def test_flower_sim_bad_input_is_one_clear_line(tmp_path, cli):
    (tmp_path / "a-file").write_text("")
    for args, message in ((["--dropout", "1.5"], "--dropout must lie in [0, 1)"),
                          (["--epsilon", "0"], "--epsilon must be positive"),
                          (["--state-dir", str(tmp_path / "a-file")], "is a file; name a folder"),
                          # before Ray starts (it took 52 s and printed four tracebacks from its workers)
                          (["--data-dir", str(tmp_path / "nodata")], "tiny.npz not found")):
        proc = cli("flower-sim", "--dataset", "tiny", "--out", tmp_path / "x", *args)
        assert_one_clear_line(proc, message)
        assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("ssh-keygen")), reason="needs openssl and ssh-keygen")
def test_localhost_deployment_equals_the_in_process_run(data, tmp_path):
    """scripts/flower_local.sh: a SuperLink and 3 SuperNodes as real processes on loopback, TLS and
    SuperNode authentication on, each SuperNode reading only its own hospital's file: the same
    bytes as the in-process reference, and no process left behind."""
    from hfgan_core.train import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(_config(data, rounds=2, d_steps=1), tmp_path / "inproc", progress=False)
    finally:
        torch.set_num_threads(threads)
    # Flower 1.42 starts a fresh ClientApp process for every message (seconds each): few rounds
    settings = ["dataset=tiny", f"data-dir={data}", "clients=3", "partition=quantity", "alpha=2.0", "min-client-size=20",
                "batch-size=8", "ndf=8", "ngf=8", "nz=16", "accountant=rdp", "rounds=2", "d-steps=1", "epsilon=10.0",
                "simulation-noise=true", "engine=loop", "synthetic-per-class=0"]
    script = Path(__file__).resolve().parents[1] / "scripts" / "flower_local.sh"
    proc = subprocess.run(["bash", str(script), str(tmp_path / "deployed"), *settings], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable, "TIMEOUT": "240"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TLS, SuperNode auth" in proc.stdout
    for name in ("metrics.jsonl", "privacy.json", "samples_client1.png"):
        assert (tmp_path / "inproc" / name).read_bytes() == (tmp_path / "deployed" / name).read_bytes(), name
    left = subprocess.run(["pgrep", "-f", "flower-superlink|flower-supernode|flower-superexec"], capture_output=True,
                          text=True).stdout.split()
    assert not left, f"processes left running: {left}"


def test_deployment_script_refuses_bad_settings(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "flower_local.sh"
    proc = subprocess.run(["bash", str(script), str(tmp_path / "x"), "colour=blue"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert_one_clear_line(proc, "unknown setting(s) colour")
    assert not (tmp_path / "x").exists()
