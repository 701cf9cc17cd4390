"""What leaves the pipeline besides the noisy uploads must not break the claim (issue 10): the
noise cannot be regenerated from the published files, per-round logs carry nothing un-noised."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from hfgan_core import engine
from hfgan_core.errors import UserError
from hfgan_core.privacy import SIMULATION_NOTE
from hfgan_core.train import DEBUG_COUNTS, TrainConfig, _load_checkpoint, setup, train


def config(**kw) -> TrainConfig:
    return tiny_config(**(dict(rounds=2, d_steps=1, epsilon=10.0, synthetic_per_class=2) | kw))


def drop_from_checkpoint(run_dir, key: str) -> None:
    """Remove ``key`` from every hospital's saved state, as a checkpoint made before it was kept."""
    path = run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for h in state["hospitals"]:
        del h[key]
    torch.save(state, path)


def first_uploads(cfg: TrainConfig, ds) -> list[torch.Tensor]:
    run = setup(cfg, ds)
    uploads, _ = engine.private_uploads(run, run.clients, engine.draw_batch(run, run.clients))
    return [torch.cat([g.flatten() for g in u]) for u in uploads]


def test_default_noise_cannot_be_regenerated_from_the_seed(tiny, tmp_path):
    """By default two runs with the same settings and seed upload different noise: whoever reads
    config.json (which records the seed) cannot redraw it and subtract it."""
    a, b = first_uploads(config(), tiny), first_uploads(config(), tiny)
    assert all(not torch.equal(u, v) for u, v in zip(a, b))
    run = train(config(), tmp_path / "run", progress=False, dataset=tiny)
    seeds = [str(h.rng.initial_seed()) for h in run.clients]
    for name in ("config.json", "privacy.json", "metrics.jsonl", "timing.json", "synthetic.json"):
        text = (tmp_path / "run" / name).read_text()
        assert not any(s in text for s in seeds), name  # the streams' seeds are written nowhere
    assert "OS entropy" in json.loads((tmp_path / "run" / "privacy.json").read_text())["noise_source"]


def test_simulation_noise_is_reproducible_but_never_shared_across_epsilons(tiny, tmp_path, capsys):
    sim = config(simulation_noise=True)
    a, b = first_uploads(sim, tiny), first_uploads(sim, tiny)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # research mode: bit-reproducible
    streams = {}
    for eps in (10.0, 1.0):
        run = setup(config(simulation_noise=True, epsilon=eps), tiny)
        streams[eps] = torch.randn(1000, generator=run.clients[0].rng)
    assert not torch.allclose(streams[10.0], streams[1.0])  # no standard-normal draw reused at another epsilon
    train(sim, tmp_path / "run", progress=False, dataset=tiny)
    assert SIMULATION_NOTE in capsys.readouterr().err  # the run says what its guarantee then assumes
    assert "trusted simulator" in json.loads((tmp_path / "run" / "privacy.json").read_text())["noise_source"]


def test_resume_continues_an_entropy_seeded_stream(tiny, tmp_path):
    """Without a seed to fall back on, resume must restore each hospital's stream from the
    checkpoint, state for state (on CUDA too: ``test_engine`` checks that on a GPU)."""
    train(config(rounds=4), tmp_path / "part", progress=False, stop_after=2, dataset=tiny)
    saved = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["hospitals"]
    saved = [h["rng"] for h in saved]
    resumed = setup(config(rounds=4), tiny)
    _load_checkpoint(resumed, tmp_path / "part")
    for h, state in zip(resumed.clients, saved):
        assert torch.equal(h.rng.get_state(), state)


def _hospitals(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(48, 1, 28, 28, generator=gen) * 2 - 1, torch.randint(2, (48,), generator=gen))
            for _ in range(n)]


@pytest.mark.parametrize("simulation", [False, True])
def test_baselines_noise_follows_the_same_rule(simulation):
    """The DP-SGD classifier's and DP-FedAvg-GAN's noise: OS entropy by default, reproducible only
    in simulation mode."""
    from hfgan_core.dpfedavg_gan import DPFedAvgGANConfig, train_dpfedavg_gan
    from hfgan_core.federated import DPSpec, FedConfig, train_federated
    hospitals = _hospitals()

    def classifier():
        res = train_federated(hospitals, hospitals[0], num_classes=2,
                              config=FedConfig(rounds=1, batch_size=16, width=8),
                              dp=DPSpec(epsilon=3.0, accountant="rdp", simulation_noise=simulation))
        return torch.cat([p.detach().flatten() for p in res.model.parameters()])

    def gan():
        cfg = DPFedAvgGANConfig(rounds=1, local_steps=1, batch_size=8, nz=8, ngf=8, ndf=8, epsilon=5.0,
                                accountant="rdp", simulation_noise=simulation)
        res = train_dpfedavg_gan(hospitals, num_classes=2, config=cfg)
        return torch.cat([p.detach().flatten() for p in res.generator.parameters()])

    for make in (classifier, gan):
        assert torch.equal(make(), make()) == simulation


def test_exact_class_counts_stay_out_of_public_outputs(tiny, tmp_path, capsys):
    """Each per-class count has sensitivity 1: config.json, privacy.json and the console carry
    hospital sizes (public) and at most a DP class mix; exact counts only in a file marked NOT
    PRIVATE, on request."""
    run = train(config(fake_labels="histogram"), tmp_path / "run", progress=True, dataset=tiny)
    exact = [np.bincount(tiny.train.labels[p], minlength=3).tolist() for p in run.parts]
    printed = capsys.readouterr()
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["client_sizes"] == [sum(c) for c in exact] and "client_class_counts" not in info
    for text in ((tmp_path / "run" / "config.json").read_text(), (tmp_path / "run" / "privacy.json").read_text(),
                 printed.out + printed.err):
        assert not any(" ".join(f"{v:>8d}" for v in row) in text or str(row) in text for row in exact)
    for name in ("config.json", "privacy.json"):  # parsed: a list spread over lines by indent=2 is caught too
        published = list(_number_lists(json.loads((tmp_path / "run" / name).read_text())))
        assert published and not any(row in published for row in exact), name
        frequencies = [[v / sum(row) for v in row] for row in exact]
        assert not any(np.allclose(f, q) for f in frequencies for q in published if len(q) == len(f)), name
    assert not (tmp_path / "run" / DEBUG_COUNTS).exists()
    # without DP the "mix" is the exact class frequencies (counts / N_i, N_i public): never published
    train(config(fake_labels="histogram", epsilon=float("inf")), tmp_path / "plain", progress=False, dataset=tiny)
    plain = json.loads((tmp_path / "plain" / "privacy.json").read_text())["clients"]
    assert all("released_label_frequencies" not in entry for entry in plain.values())
    train(config(debug_exact_counts=True), tmp_path / "debug", progress=False, dataset=tiny)
    debug = json.loads((tmp_path / "debug" / DEBUG_COUNTS).read_text())
    assert debug["warning"].startswith("NOT PRIVATE") and debug["client_class_counts"] == exact


def _number_lists(obj):
    """Every list of numbers anywhere in a parsed JSON document."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _number_lists(v)
    elif isinstance(obj, list):
        if obj and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
            yield obj
        for v in obj:
            yield from _number_lists(v)


@pytest.mark.parametrize("engine_name", ["batched", "loop"])
def test_the_published_d_loss_reads_no_real_image(tiny, engine_name):
    """metrics.jsonl's d_loss_fake is published un-noised every round, so it must be D's loss on the
    fakes only: replacing every real image changes D's update but not that number (one D step,
    computed before the step)."""
    from hfgan_core.train import train_round
    step = engine.train_round if engine_name == "batched" else train_round
    a, b = setup(config(simulation_noise=True), tiny), setup(config(simulation_noise=True), tiny)
    for h in b.clients:
        h.images = -h.images  # other real images, the same Poisson draws
    line_a, line_b = step(a), step(b)
    assert line_a["d_loss_fake"] == line_b["d_loss_fake"]
    assert not all(torch.equal(p, q) for p, q in zip(a.discriminator.parameters(), b.discriminator.parameters()))


def test_the_dp_label_mix_is_drawn_once_per_run(tiny, tmp_path):
    """--fake-labels histogram: the accountant counts one noisy histogram per hospital, so a resumed
    run (with OS-entropy noise, where a new draw would differ) keeps the mix it drew and releases
    exactly that one; a checkpoint without its mix is refused rather than drawing a second."""
    cfg = config(rounds=4, checkpoint_every=1, fake_labels="histogram", histogram_sigma=2.0)
    first = train(cfg, tmp_path / "run", progress=False, stop_after=2, dataset=tiny)
    drawn = [h.fake_label_probs.clone() for h in first.clients]
    resumed = train(cfg, tmp_path / "run", resume=True, progress=False, dataset=tiny)
    assert resumed.round == 4 and all(torch.equal(h.fake_label_probs, d) for h, d in zip(resumed.clients, drawn))
    released = json.loads((tmp_path / "run" / "privacy.json").read_text())["clients"]
    assert [released[str(i)]["released_label_frequencies"] for i in range(3)] == [d.tolist() for d in drawn]
    again = setup(cfg, tiny)  # a fresh set-up draws another mix: what resume must not use
    assert not all(torch.equal(h.fake_label_probs, d) for h, d in zip(again.clients, drawn))

    drop_from_checkpoint(tmp_path / "run", "label_mix")
    with pytest.raises(UserError, match="second, uncounted release"):
        train(cfg, tmp_path / "run", resume=True, progress=False, dataset=tiny)


def test_resume_refuses_steps_taken_at_another_sigma(tiny, tmp_path, monkeypatch):
    """A resumed run accounts the steps already taken at the sigma it calibrates now; if that is not
    the sigma they were taken at (another Opacus or SciPy, or a checkpoint made before sigma was
    kept), the epsilon it reports would be wrong, so resume refuses instead."""
    import hfgan_core.train as train_module
    cfg = config(rounds=4, checkpoint_every=1)
    first = train(cfg, tmp_path / "run", progress=False, stop_after=2, dataset=tiny)
    sigmas = [h.budget.noise_multiplier for h in first.clients]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["hospitals"]
    assert [h["noise_multiplier"] for h in saved] == sigmas and all(s > 0 for s in sigmas)
    real = train_module.calibrate_noise
    monkeypatch.setattr(train_module, "calibrate_noise", lambda **kw: 1.5 * real(**kw))
    with pytest.raises(UserError, match="wrong sigma"):
        train(cfg, tmp_path / "run", resume=True, progress=False, dataset=tiny)
    monkeypatch.setattr(train_module, "calibrate_noise", real)
    drop_from_checkpoint(tmp_path / "run", "noise_multiplier")
    with pytest.raises(UserError, match="wrong sigma"):
        train(cfg, tmp_path / "run", resume=True, progress=False, dataset=tiny)


def test_delta_must_be_below_one_over_each_hospitals_size(tiny):
    """delta >= 1/N_i lets a mechanism publish one of hospital i's records outright; every DP path
    refuses it, naming the hospital's size."""
    from hfgan_core.federated import DPSpec, FedConfig, train_federated
    from hfgan_core.train import hospital_parts
    cfg = config()
    smallest = min(len(p) for p in hospital_parts(cfg, tiny.train.labels))
    assert setup(config(delta=0.5 / smallest), tiny).clients  # below 1/N_i everywhere: fine
    with pytest.raises(UserError, match=f"not below 1/{smallest}"):
        setup(config(delta=1.0 / smallest), tiny)
    x, y = tiny.train.tensors()
    hospitals = [(x[:40], y[:40]), (x[40:], y[40:])]
    with pytest.raises(UserError, match="not below 1/40"):
        train_federated(hospitals, tiny.val.tensors(), num_classes=3, config=FedConfig(rounds=1),
                        dp=DPSpec(epsilon=5.0, delta=1 / 40))
