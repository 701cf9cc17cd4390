"""The round's data flow: size-weighted aggregation, a D step built from uploads only, a G step
that never reads real data."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_config, write_npz
from hfgan_core import client as cl
from hfgan_core import server as sv
from hfgan_core.data import load_dataset
from hfgan_core.train import setup, train_round


@pytest.fixture
def tiny_run(tmp_path):
    write_npz(tmp_path / "tiny.npz", n=(120, 20, 20), classes=2)
    cfg = tiny_config(rounds=4, client_fraction=0.67,
                      d_steps=1, simulation_noise=True)  # one D step a round: the test replays it by hand
    return setup(cfg, load_dataset("tiny", tmp_path))


def test_aggregate_is_the_size_weighted_mean():
    gen = torch.Generator().manual_seed(0)
    sizes = [10, 30, 60]
    uploads = [[torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)] for _ in sizes]
    got = sv.aggregate(uploads, sizes)
    for p in range(2):
        by_hand = torch.zeros_like(uploads[0][p])
        for n, u in zip(sizes, uploads):
            by_hand += u[p] * n / 100
        assert torch.allclose(got[p], by_hand)
    assert sv.aggregation_weights(sizes) == [0.1, 0.3, 0.6]


def test_selection_is_seeded_and_sized():
    a = sv.selection_schedule(0, 10, 50, fraction=0.3)
    assert a == sv.selection_schedule(0, 10, 50, fraction=0.3)
    assert all(len(s) == 3 and len(set(s)) == 3 and max(s) < 10 for s in a)
    counts = np.bincount(np.concatenate(a), minlength=10)
    assert counts.min() > 0  # over 50 rounds every client is picked at some point


def test_discriminator_update_uses_only_the_uploads(tiny_run, monkeypatch):
    run = tiny_run
    recorded = []
    real_upload = cl.discriminator_upload

    def spy(client, *args, **kwargs):
        grads, loss = real_upload(client, *args, **kwargs)
        recorded.append((client.n_examples, [g.clone() for g in grads]))
        client.images.fill_(float("nan"))  # anything reading real data after the upload would turn NaN
        return grads, loss

    monkeypatch.setattr(cl, "discriminator_upload", spy)
    d_copy, opt_copy = copy.deepcopy(run.discriminator), None
    opt_copy = torch.optim.Adam(d_copy.parameters(), lr=run.config.lr_d, betas=(run.config.beta1, run.config.beta2))
    opt_copy.load_state_dict(run.d_optimizer.state_dict())
    selected = run.schedule[0]
    train_round(run)
    assert [n for n, _ in recorded] == [run.clients[i].n_examples for i in selected]
    sizes = [n for n, _ in recorded]
    mean = [sum(u[p] * n / sum(sizes) for n, u in recorded) for p in range(len(recorded[0][1]))]
    for p, g in zip(d_copy.parameters(), mean):
        p.grad = g
    opt_copy.step()
    for a, b in zip(run.discriminator.parameters(), d_copy.parameters()):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-7)


def test_generator_step_reads_no_real_data(tiny_run):
    client, d = tiny_run.clients[0], tiny_run.discriminator
    clean = copy.deepcopy(client)
    torch.manual_seed(5)
    cl.generator_step(clean, d, batch_size=8)
    client.images = torch.full_like(client.images, float("nan"))
    client.labels = torch.full_like(client.labels, -1)
    torch.manual_seed(5)
    cl.generator_step(client, d, batch_size=8)
    for a, b in zip(client.generator.parameters(), clean.generator.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)


def test_generator_step_leaves_discriminator_untouched(tiny_run):
    d = tiny_run.discriminator
    before = [p.clone() for p in d.parameters()]
    cl.generator_step(tiny_run.clients[1], d, batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(before, d.parameters()))
    assert all(p.grad is None for p in d.parameters())


def test_privacy_steps_follow_the_schedule(tiny_run):
    run = tiny_run
    for _ in range(run.config.rounds):
        train_round(run)
    for c in run.clients:
        picked = sum(c.cid in s for s in run.schedule)
        assert c.budget.steps == picked * run.config.d_steps
        assert c.budget.update_epsilon() <= run.config.epsilon
