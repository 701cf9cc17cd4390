"""The batched engine against the per-hospital reference loop: the same uploads, the same steps,
the same privacy accounting."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import DEVICES, tiny_config
from hfgan_core import client as cl
from hfgan_core import engine
from hfgan_core.device import require_device
from hfgan_core.train import TrainConfig, setup, train, train_round


def config(**kw) -> TrainConfig:
    # twin runs draw the same noise (simulation_noise): the engines are compared draw for draw
    return tiny_config(**(dict(rounds=6, simulation_noise=True) | kw))


def twin_runs(ds, **kw):
    """Two identical runs (same seed): one for each engine."""
    return setup(config(**kw), ds), setup(config(**kw), ds)


def close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float) -> bool:
    return all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=atol) for x, y in zip(a, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aux_weight", [1.0, 0.0])
def test_clipped_segment_sums_equal_one_call_per_hospital(tiny, aux_weight, device):
    """The default D (AC-GAN head and its loss) and the plain one: one backward pass over all
    hospitals, summed per hospital, gives each hospital's own clipped sum."""
    run = setup(config(aux_weight=aux_weight, max_grad_norm=0.05, device=device), tiny)
    assert (run.discriminator.aux is not None) == (aux_weight > 0)
    batch = engine.draw_batch(run, run.clients)
    with run.clipper.capture():
        losses = cl.per_example_d_loss(run.discriminator, batch.x, batch.y, batch.is_real, run.objective)
    sums, norms = run.clipper.clipped_grad_sum(losses, segments=batch.sizes)
    assert (norms > 0.05).any()  # clipping is active, so a mix-up of factors would show
    start = 0
    for i, n in enumerate(batch.sizes):
        part = slice(start, start + n)
        with run.clipper.capture():
            own = cl.per_example_d_loss(run.discriminator, batch.x[part], batch.y[part], batch.is_real[part],
                                        run.objective)
        want, _ = run.clipper.clipped_grad_sum(own)
        assert close([s[i] for s in sums], want, atol=1e-5)
        start += n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aux_weight, diffaugment", [(1.0, True), (1.0, False), (0.0, True)])
def test_batched_uploads_equal_the_reference_loop(tiny, aux_weight, diffaugment, device):
    """Same rng draws (mask, fake labels, z, DiffAugment's, noise), same clipped sums: the same noisy
    uploads."""
    loop, batched = twin_runs(tiny, aux_weight=aux_weight, epsilon=5.0, fakes=11, diffaugment=diffaugment,
                              device=device)
    assert loop.objective.diffaugment == diffaugment
    want = [cl.discriminator_upload(h, loop.discriminator, loop.clipper, batch_size=8, max_grad_norm=1.0,
                                    objective=loop.objective, fakes=11)[0] for h in loop.clients]
    got, _ = engine.private_uploads(batched, batched.clients, engine.draw_batch(batched, batched.clients))
    sigmas = [h.budget.noise_multiplier for h in batched.clients]
    assert min(sigmas) > 0
    for w, g in zip(want, got):
        assert close(g, w, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("epsilon, diffaugment", [(float("inf"), False), (10.0, True), (float("inf"), True)])
def test_engines_take_the_same_steps_without_noise(tiny, epsilon, diffaugment, device):
    """epsilon = inf (plain gradients) and clipping with the noise turned off, with and without
    DiffAugment: after three rounds of d_steps = 2, D, every G_i and every EMA copy agree (EMA decay
    0.5, so that an EMA left at its start would be told apart)."""
    loop, batched = twin_runs(tiny, epsilon=epsilon, d_steps=2, mode_seeking=0.5, smoothness=0.2,
                              diffaugment=diffaugment, device=device, g_ema=0.5)
    for run in (loop, batched):
        for h in run.clients:
            if h.budget is not None:
                h.budget.noise_multiplier = 0.0
    for _ in range(3):
        a, b = train_round(loop), engine.train_round(batched)
        assert a["selected"] == b["selected"] and a["steps"] == b["steps"]
        assert a["d_loss_fake"] == pytest.approx(b["d_loss_fake"], rel=1e-4)
        assert a["g_loss"] == pytest.approx(b["g_loss"], rel=1e-4)
    # Adam divides by the gradient's own scale, so float32 summation-order differences grow a little per step
    assert close(list(loop.discriminator.parameters()), list(batched.discriminator.parameters()), atol=1e-4)
    for x, y in zip(loop.clients, batched.clients):
        assert close(list(x.generator.parameters()), list(y.generator.parameters()), atol=1e-4)
        assert close(list(x.generator.buffers()), list(y.generator.buffers()), atol=1e-4)
        assert close(list(x.ema.parameters()), list(y.ema.parameters()), atol=1e-4)
        assert not close(list(y.ema.parameters()), list(y.generator.parameters()), atol=2e-4)  # it lags G


def test_stacked_generators_equal_separate_calls(tiny):
    run = setup(config(), tiny)
    gens = [h.generator for h in run.clients]
    z, y = torch.randn(3, 10, 16), torch.randint(3, (3, 10))
    before = [g.project[2].running_mean.clone() for g in gens]
    x, params = engine.stacked_generate(gens, z, y)
    stats = [g.project[2].running_mean.clone() for g in gens]
    for g, b in zip(gens, before):
        g.project[2].running_mean.copy_(b)
    for h, g in enumerate(gens):
        assert torch.allclose(x[h], g(z[h], y[h]), atol=1e-6)
        assert torch.allclose(stats[h], g.project[2].running_mean)  # per-generator BatchNorm statistics
    assert all(p.shape[0] == 3 for p in params.values())


def test_batched_generator_step_reads_no_real_data(tiny):
    a, b = twin_runs(tiny)
    for h in b.clients:
        h.images = torch.full_like(h.images, float("nan"))
        h.labels = torch.full_like(h.labels, -1)
    engine.generator_step(a, a.clients)
    engine.generator_step(b, b.clients)
    for x, y in zip(a.clients, b.clients):
        assert all(torch.isfinite(p).all() and torch.equal(p, q)
                   for p, q in zip(x.generator.parameters(), y.generator.parameters()))


def test_accounted_steps_equal_uploads_made(tiny, tmp_path, monkeypatch):
    """Client fraction < 1, d_steps > 1, a stop and a resume: every upload is counted, once."""
    made = {h: 0 for h in range(3)}
    real_uploads = engine.private_uploads

    def counting(run, selected, batch):
        uploads, losses = real_uploads(run, selected, batch)
        assert len(uploads) == len(selected)
        for h in selected:
            made[h.cid] += 1
        return uploads, losses

    monkeypatch.setattr(engine, "private_uploads", counting)
    cfg = config(client_fraction=0.67, d_steps=3, rounds=7, checkpoint_every=2)
    train(cfg, tmp_path / "run", progress=False, stop_after=3, dataset=tiny)
    train(cfg, tmp_path / "run", resume=True, progress=False, dataset=tiny)
    privacy = json.loads((tmp_path / "run" / "privacy.json").read_text())
    steps = {int(k): v["steps"] for k, v in privacy["clients"].items()}
    picked = {h: sum(h in s for s in setup(cfg, tiny).schedule) for h in range(3)}
    assert steps == made == {h: picked[h] * 3 for h in range(3)}
    assert min(steps.values()) < 7 * 3  # the fraction left someone out at least once


def test_poisson_mask_draws_independent_records_at_rate_q():
    """The sampling the accountant assumes (Poisson subsampling): over many draws each record joins
    with probability q, batch sizes spread as Binomial(N, q) (a fixed-size batch has no spread),
    records join independently of each other (no blocks) and of earlier draws (no epochs)."""
    n, q, draws = 200, 0.1, 5000
    hospital = SimpleNamespace(n_examples=n, rng=torch.Generator().manual_seed(0), images=torch.zeros(1))
    masks = torch.stack([cl.poisson_mask(hospital, q) for _ in range(draws)]).double()  # (draws, n)
    counts, sizes = masks.sum(0), masks.sum(1)
    assert ((counts - draws * q).abs() / math.sqrt(draws * q * (1 - q))).max() < 4.5  # every record at rate q
    assert counts.var() / (draws * q * (1 - q)) == pytest.approx(1.0, abs=0.3)  # binomial spread over records
    assert sizes.mean() == pytest.approx(n * q, abs=0.3)
    assert sizes.var() / (n * q * (1 - q)) == pytest.approx(1.0, abs=0.1)
    assert (masks[:, :-1] * masks[:, 1:]).mean() == pytest.approx(q * q, abs=0.001)  # neighbours independent
    assert (masks[:-1] * masks[1:]).mean() == pytest.approx(q * q, abs=0.001)  # draws independent


@pytest.mark.parametrize("engine_name", ["batched", "loop"])
def test_rounds_sample_at_the_rate_each_accountant_was_given(tiny, monkeypatch, engine_name):
    run = setup(config(epsilon=5.0, d_steps=2, batch_size=8), tiny)
    asked = []
    real_mask = cl.poisson_mask
    monkeypatch.setattr(cl, "poisson_mask", lambda h, q: asked.append((h.cid, q)) or real_mask(h, q))
    for _ in range(2):
        (engine.train_round if engine_name == "batched" else train_round)(run)
    rates = {h.cid: h.budget.sample_rate for h in run.clients}
    assert len(asked) == 2 * 2 * len(run.clients)  # one mask per hospital and D step
    assert all(q == rates[cid] == 8 / run.clients[cid].n_examples for cid, q in asked)


def test_resume_restores_every_hospital_rng(tiny, tmp_path):
    full = train(config(), tmp_path / "full", progress=False, dataset=tiny)
    train(config(), tmp_path / "part", progress=False, stop_after=2, dataset=tiny)
    resumed = train(config(), tmp_path / "part", resume=True, progress=False, dataset=tiny)
    for a, b in zip(full.clients, resumed.clients):
        assert torch.equal(a.rng.get_state(), b.rng.get_state())
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert len([h["rng"] for h in state["hospitals"]]) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resume_draws_fresh_noise(tiny, tmp_path):
    """On CUDA the hospitals' generators live on the GPU; a resumed run must continue their
    streams, not restart them (a restarted stream would repeat masks and noise)."""
    full = train(config(device="cuda"), tmp_path / "full", progress=False, dataset=tiny)
    train(config(device="cuda"), tmp_path / "part", progress=False, stop_after=2, dataset=tiny)
    resumed = train(config(device="cuda"), tmp_path / "part", resume=True, progress=False, dataset=tiny)
    for a, b in zip(full.clients, resumed.clients):
        assert a.rng.device.type == "cuda" and torch.equal(a.rng.get_state(), b.rng.get_state())
    lines = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert len({l["d_loss_fake"] for l in lines}) == len(lines)


def test_cuda_runs_keep_float32_exact(monkeypatch, tf32_on):
    """On a GPU, TF32 convolutions round the clipped sums to 10 bits while the norms that set the
    clip factors come from float32 matmuls (uploads off by ~1e-3 relative on an H200): a CUDA run
    turns TF32 off."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cudnn, cublas = tf32_on
    require_device("cpu")
    assert cudnn.allow_tf32 and cublas.allow_tf32  # CPU runs: nothing to change
    require_device("cuda")
    assert not cudnn.allow_tf32 and not cublas.allow_tf32
