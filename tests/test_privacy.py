"""Accountant values against dp-accounting, calibration, the Gaussian noise, the budget ledger."""
from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp
from scipy import stats

from hfgan_core.errors import UserError
from opacus.accountants import PRVAccountant, RDPAccountant

from hfgan_core.privacy import (SIGMA_MAX, ClientBudget, PrivacyCurve, calibrate_noise, compute_epsilon,
                                 max_steps_within, noisy_label_histogram, privatize, require_reachable)


CASES = [(0.07, 1.0, 300), (0.19, 0.785, 20), (0.0136, 0.632, 1500), (0.5, 2.0, 50)]
OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _event(q, sigma, steps):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)


@pytest.mark.parametrize("q,sigma,steps", CASES)
def test_prv_matches_dp_accounting_pld(q, sigma, steps):
    ref = pld.PLDAccountant(value_discretization_interval=1e-3)
    ref.compose(_event(q, sigma, steps))
    ours = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant="prv")
    assert ours == pytest.approx(ref.get_epsilon(1e-5), rel=0.01)


@pytest.mark.parametrize("q,sigma,steps", CASES)
def test_rdp_matches_dp_accounting_rdp(q, sigma, steps):
    ref = rdp.RdpAccountant(OPACUS_ORDERS)
    ref.compose(_event(q, sigma, steps))
    ours = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant="rdp")
    assert ours == pytest.approx(ref.get_epsilon(1e-5), rel=0.01)


def test_epsilon_edge_cases():
    assert compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0
    assert math.isinf(compute_epsilon(noise_multiplier=0.0, sample_rate=0.1, steps=5, delta=1e-5))


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibrated_sigma_never_exceeds_target_and_is_tight(accountant):
    q, steps = 64 / 4708, 1500
    sigma = calibrate_noise(target_epsilon=10, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant)
    spent = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant=accountant)
    assert spent <= 10
    # 1 % less noise would overspend: the calibration is not wastefully conservative.
    assert compute_epsilon(noise_multiplier=sigma * 0.99, sample_rate=q, steps=steps, delta=1e-5,
                           accountant=accountant) > 10


@pytest.mark.parametrize("bad,match", [(dict(target_epsilon=0), "positive"), (dict(delta=1.5), "delta"),
                                       (dict(target_epsilon=1e-4, steps=100000, sample_rate=0.9), "out of reach")])
def test_impossible_targets_are_refused(bad, match):
    kw = dict(target_epsilon=10, delta=1e-5, sample_rate=0.05, steps=100, accountant="rdp") | bad
    with pytest.raises(UserError, match=match):
        calibrate_noise(**kw)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_max_steps_within_is_the_largest_feasible_count(accountant):
    curve = PrivacyCurve(noise_multiplier=0.8, sample_rate=0.1, max_steps=3000, delta=1e-5, accountant=accountant)
    n = max_steps_within(curve, 5.0)
    assert 0 < n < 3000
    assert curve.epsilon(n) <= 5.0 < curve.epsilon(n + 1)
    assert max_steps_within(curve, 1e3) == 3000


@pytest.mark.parametrize("q,sigma,steps,hist", [(0.07, 1.0, 300, None), (0.19, 0.785, 40, 10.0)])
def test_privacy_curve_matches_fresh_opacus_accountants_at_every_count(q, sigma, steps, hist):
    """The per-round curve (one discretisation for the largest count) against a fresh Opacus
    accountant per count: PRV within its own error bound, RDP exactly."""
    history = [(hist, 1.0, 1)] if hist else []
    for accountant, cls, tol in (("prv", PRVAccountant, 0.01), ("rdp", RDPAccountant, 1e-9)):
        curve = PrivacyCurve(noise_multiplier=sigma, sample_rate=q, max_steps=steps, delta=1e-5,
                             accountant=accountant, histogram_sigma=hist)
        values = [curve.epsilon(k) for k in range(steps + 1)]
        assert all(b >= a - 1e-9 for a, b in zip(values, values[1:]))  # more steps never cost less
        for k in (1, 2, steps // 3, steps - 1, steps):
            fresh = cls()
            fresh.history = [(sigma, q, k)] + history
            assert values[k] == pytest.approx(fresh.get_epsilon(1e-5), abs=tol)
    with pytest.raises(ValueError):
        curve.epsilon(steps + 1)


def test_budget_ledger():
    b = ClientBudget(n_examples=100, sample_rate=0.5, noise_multiplier=1.0, delta=1e-5, accountant="rdp",
                     max_steps=3)
    assert b.can_spend(3) and not b.can_spend(4)
    b.spend(2)
    assert not b.can_spend(2)
    ref = rdp.RdpAccountant(OPACUS_ORDERS)  # the ledger's epsilon is the steps spent, composed (second library)
    ref.compose(_event(0.5, 1.0, 2))
    assert b.update_epsilon() == pytest.approx(ref.get_epsilon(1e-5), rel=0.01)
    assert set(b.to_json()) == {"n_examples", "sample_rate", "noise_multiplier", "steps", "epsilon", "delta",
                                "accountant", "histogram_sigma"}


def test_noise_has_std_sigma_c_over_normaliser():
    """200 draws x 500 coordinates: sample std within 1 % (about 7 standard errors) of sigma*C/normaliser,
    mean within 5 standard errors of 0, and a KS test that cannot reject normality at 1e-3."""
    torch.manual_seed(0)
    sigma, c, normaliser = 1.3, 0.7, 128.0
    signal = [torch.randn(20, 25)]
    draws = torch.stack([privatize(signal, noise_multiplier=sigma, max_grad_norm=c, normaliser=normaliser)[0]
                         - signal[0] / normaliser for _ in range(200)]).flatten().double().numpy()
    expected = sigma * c / normaliser
    assert draws.std() == pytest.approx(expected, rel=0.01)
    assert abs(draws.mean()) < 5 * expected / np.sqrt(draws.size)
    assert stats.kstest(draws / expected, "norm").pvalue > 1e-3


@pytest.mark.parametrize("hist_sigma,q,sigma,steps", [(10.0, 0.07, 1.0, 300), (3.0, 0.19, 0.8, 20)])
def test_histogram_release_composes_as_dp_accounting_says(hist_sigma, q, sigma, steps):
    """One Gaussian label-histogram release (sensitivity 1) plus the training steps."""
    event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(hist_sigma), _event(q, sigma, steps)])
    ref_pld = pld.PLDAccountant(value_discretization_interval=1e-3)
    ref_pld.compose(event)
    ref_rdp = rdp.RdpAccountant(OPACUS_ORDERS)
    ref_rdp.compose(event)
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, histogram_sigma=hist_sigma)
    assert compute_epsilon(**kw) == pytest.approx(ref_pld.get_epsilon(1e-5), rel=0.01)
    assert compute_epsilon(accountant="rdp", **kw) == pytest.approx(ref_rdp.get_epsilon(1e-5), rel=0.01)
    assert compute_epsilon(**kw) > compute_epsilon(**(kw | {"histogram_sigma": None}))


def test_histogram_alone_and_calibration_with_it():
    ref = pld.PLDAccountant(value_discretization_interval=1e-3)
    ref.compose(dp_accounting.GaussianDpEvent(10.0))
    alone = compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5, histogram_sigma=10.0)
    assert alone == pytest.approx(ref.get_epsilon(1e-5), abs=0.02)  # PRV's absolute eps_error is 0.01
    kw = dict(target_epsilon=10, delta=1e-5, sample_rate=0.05, steps=300, accountant="rdp")
    with_hist = calibrate_noise(histogram_sigma=2.0, **kw)
    assert with_hist > 1.01 * calibrate_noise(**kw)  # the histogram's share leaves less for training
    assert compute_epsilon(noise_multiplier=with_hist, sample_rate=0.05, steps=300, delta=1e-5, accountant="rdp",
                           histogram_sigma=2.0) <= 10
    with pytest.raises(UserError, match="label histogram alone"):
        calibrate_noise(histogram_sigma=0.1, **kw)


def test_noisy_label_histogram():
    labels = np.repeat([0, 1, 2], [700, 200, 100])
    exact = noisy_label_histogram(labels, 4, None, np.random.default_rng(0))
    assert np.allclose(exact, [0.7, 0.2, 0.1, 0.0])
    draws = np.stack([noisy_label_histogram(labels, 4, 5.0, np.random.default_rng(s)) for s in range(400)])
    assert np.allclose(draws.sum(1), 1.0) and (draws >= 0).all()
    assert np.allclose(draws.mean(0)[:3], [0.7, 0.2, 0.1], atol=0.01)
    # the noise is N(0, sigma^2) on each count (what the accountant charges): by hand from the same draws
    for s in range(5):
        counts = np.clip(np.array([700.0, 200, 100, 0]) + np.random.default_rng(s).normal(0.0, 5.0, 4), 0, None)
        assert np.allclose(draws[s], counts / counts.sum())
    # and its size shows in the spread: a count far from 0 moves by sigma, i.e. sd(f) ~ sigma / N
    # (delta method on f0 = (700 + e0) / (1000 + e0 + e1 + e2 + max(e3, 0)); var max(e, 0) = sigma^2 (1/2 - 1/(2 pi)))
    sd = draws[:, 0].std()
    expected = 5.0 / 1000 * np.sqrt(0.3 ** 2 + 2 * 0.7 ** 2 + 0.7 ** 2 * (0.5 - 1 / (2 * np.pi)))
    assert 0.85 * expected < sd < 1.15 * expected


def test_calibration_guarantee_is_a_real_check(monkeypatch):
    """The final 'epsilon(sigma) <= target' is checked with an exception, not an assert that
    ``python -O`` would drop: an accountant that answers differently the second time it is asked
    about the same sigma (a stand-in for any non-monotone or unstable accountant) is refused."""
    import hfgan_core.privacy as pv
    seen: dict[float, int] = {}

    def unstable(*, noise_multiplier, **_):
        seen[noise_multiplier] = seen.get(noise_multiplier, 0) + 1
        if noise_multiplier == 0:
            return math.inf
        return 10.0 / noise_multiplier if seen[noise_multiplier] == 1 else 100.0

    monkeypatch.setattr(pv, "compute_epsilon", unstable)
    with pytest.raises(RuntimeError, match="refusing an uncalibrated sigma"):
        pv.calibrate_noise(target_epsilon=5.0, delta=1e-5, sample_rate=0.01, steps=10)


def test_replace_one_epsilon_matches_the_gaussian_closed_form():
    """Without subsampling, T steps of a Gaussian with sensitivity 2C (replace-one) and noise
    sigma*C compose to a Gaussian mechanism with mu = 2 sqrt(T) / sigma, whose delta(eps) has a
    closed form (Balle & Wang 2018): delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    from scipy.optimize import brentq
    from scipy.stats import norm
    from hfgan_core.privacy import epsilon_replace_one
    sigma, steps, delta = 8.0, 20, 1e-5
    mu = 2 * math.sqrt(steps) / sigma
    closed = brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 1e-6, 50)
    got = epsilon_replace_one(noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=delta)
    assert closed <= got <= closed * 1.01  # the PLD discretisation errs on the safe side
    # with subsampling: above add/remove (the record can move the sum by 2C), below twice it
    kw = dict(noise_multiplier=1.0, sample_rate=0.05, steps=300, delta=1e-5)
    add_remove = compute_epsilon(accountant="prv", **kw)
    assert add_remove < epsilon_replace_one(**kw) < 2 * add_remove  # here 5.81 and 8.96


def test_a_histogram_run_releases_and_accounts_the_same_sigma(tiny, tmp_path, monkeypatch):
    """fake_labels='histogram' in a real run: each hospital's label histogram is noised with the
    sigma its accountant composes; privacy.json's epsilon is dp-accounting's for the D steps plus that
    one release; and D's sigma was recalibrated so that both fit the target together."""
    import json

    from conftest import tiny_config
    from hfgan_core import train as train_module
    released = []
    real = train_module.noisy_label_histogram
    monkeypatch.setattr(train_module, "noisy_label_histogram",
                        lambda labels, k, sigma, rng: released.append(sigma) or real(labels, k, sigma, rng))
    cfg = tiny_config(rounds=3, epsilon=5.0, fake_labels="histogram", histogram_sigma=4.0, simulation_noise=True)
    train_module.train(cfg, tmp_path / "hist", progress=False, dataset=tiny)
    train_module.train(tiny_config(rounds=3, epsilon=5.0, simulation_noise=True), tmp_path / "uniform",
                       progress=False, dataset=tiny)
    hist, uniform = (json.loads((tmp_path / r / "privacy.json").read_text())["clients"] for r in ("hist", "uniform"))
    assert released == [4.0] * cfg.clients
    for cid, entry in hist.items():
        ref = rdp.RdpAccountant(OPACUS_ORDERS)
        ref.compose(_event(entry["sample_rate"], entry["noise_multiplier"], entry["steps"]))
        ref.compose(dp_accounting.GaussianDpEvent(4.0))
        assert entry["histogram_sigma"] == 4.0 and entry["steps"] == 3 * cfg.d_steps
        assert entry["epsilon"] == pytest.approx(ref.get_epsilon(1e-5), rel=0.01)
        assert entry["epsilon"] <= 5.0
        assert entry["noise_multiplier"] > uniform[cid]["noise_multiplier"]  # the histogram spent part of epsilon


def test_simulation_streams_differ_for_every_setting_but_where_a_run_executes():
    """Simulation noise is derived from the seed. Two runs that differ in any setting (a tuning
    grid's points, a recipe search) must draw different noise, else f(D) + σz and g(D) + σ'z with
    one z combine into a noise-free σ'f(D) - σg(D). Where a run executes (device, engine, how often
    it checkpoints) changes nothing it computes, and keeps the stream."""
    from dataclasses import replace

    from hfgan_core.federated import DPSpec, FedConfig
    from hfgan_core.privacy import config_key
    from hfgan_core.train import TrainConfig, hospital_rng

    def first_draws(c: TrainConfig) -> torch.Tensor:
        return torch.rand(8, generator=hospital_rng(c, 0, torch.device("cpu")))
    base = TrainConfig(epsilon=10.0, simulation_noise=True)
    same = first_draws(base)
    assert torch.equal(same, first_draws(base))  # reproducible
    for other in (dict(lr_d=2e-3), dict(rounds=base.rounds + 1), dict(batch_size=32), dict(noise_multiplier=1.0)):
        assert not torch.equal(same, first_draws(replace(base, **other))), other
    for where in (dict(engine="loop"), dict(checkpoint_every=3), dict(data_dir="/elsewhere")):
        assert torch.equal(same, first_draws(replace(base, **where))), where
    dp = DPSpec(epsilon=10.0, simulation_noise=True)
    assert config_key(FedConfig(lr=1e-3), dp) != config_key(FedConfig(lr=3e-3), dp)
    assert config_key(FedConfig(), dp) != config_key(FedConfig(), replace(dp, max_grad_norm=0.1))
    assert config_key(FedConfig(device="cpu"), dp) == config_key(FedConfig(device="cuda"), dp)
    # other data, other draws: the benchmark names the data in every key (runner._data_id)
    from hfgan_core.dpfedavg_gan import DPFedAvgGANConfig
    assert config_key(FedConfig(), dp) != config_key(FedConfig(), replace(dp, data_id="brainmri: 4000 training images"))
    gan = DPFedAvgGANConfig(simulation_noise=True)
    assert config_key(gan) != config_key(replace(gan, data_id="retinamnist: 1080 training images"))


def test_require_reachable_refuses_exactly_what_calibration_refuses():
    """The early check (one accountant call, before a command writes anything) and the calibration
    that runs later agree on either side of the largest sigma the calibration tries."""
    kw = dict(delta=1e-5, sample_rate=0.2, steps=50, accountant="rdp")
    floor = compute_epsilon(noise_multiplier=SIGMA_MAX, **kw)
    require_reachable(target_epsilon=floor * 1.01, **kw)
    assert calibrate_noise(target_epsilon=floor * 1.01, **kw) <= SIGMA_MAX
    for check in (require_reachable, calibrate_noise):
        with pytest.raises(UserError, match="is out of reach for 50 steps at sample rate 0.2000"):
            check(target_epsilon=floor * 0.99, **kw)
