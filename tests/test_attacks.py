"""Membership inference statistics against pairwise counts, the attacks on planted leaks, and the
one-run audit's conversion from canary guesses to an epsilon lower bound, against a brute-force
binomial tail and against mechanisms whose epsilon is known."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import real_data
from hfgan_core.attacks import (attack_summary, audit_p_value, best_guesses, discriminator_membership_scores,
                               epsilon_lower_bound, generator_membership_scores)
from hfgan_core.models import Discriminator


def brute_tail(r: int, v: int, eps: float) -> float:
    p = math.exp(eps) / (1 + math.exp(eps))
    return sum(math.comb(r, k) * p ** k * (1 - p) ** (r - k) for k in range(v, r + 1))


@pytest.mark.parametrize("r,v,eps", [(50, 40, 1.0), (200, 120, 0.3), (10, 10, 2.0), (30, 0, 1.0)])
def test_p_value_without_delta_is_the_binomial_tail(r, v, eps):
    assert math.isclose(audit_p_value(m=2 * r, r=r, v=v, epsilon=eps, delta=0.0), brute_tail(r, v, eps),
                        rel_tol=1e-9, abs_tol=1e-15)


def brute_delta_term(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke, Nasr & Jagielski (2023), Prop. 5.2's correction for delta: 2 m delta times the
    largest P[v - i <= W <= v - 1] / i over i = 1..m, W ~ Binomial(r, e^eps / (1 + e^eps))."""
    p = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, k) * p ** k * (1 - p) ** (r - k) for k in range(r + 1)]
    return 2 * m * delta * max(sum(pmf[max(0, v - i):v]) / i for i in range(1, m + 1))


@pytest.mark.parametrize("r,v,eps,delta", [(50, 40, 1.0, 1e-3), (200, 120, 0.3, 1e-5), (10, 10, 2.0, 1e-2)])
def test_p_value_with_delta_adds_the_papers_correction(r, v, eps, delta):
    m = 2 * r
    want = min(1.0, brute_tail(r, v, eps) + brute_delta_term(m, r, v, eps, delta))
    assert math.isclose(audit_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta), want, rel_tol=1e-9)


def test_lower_bound_is_where_the_tail_crosses_beta():
    r, v = 400, 300
    got = epsilon_lower_bound(m=1000, r=r, v=v, delta=0.0)
    lo, hi = 0.0, 20.0  # an independent bisection on the brute-force tail
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if brute_tail(r, v, mid) < 0.05 else (lo, mid)
    assert math.isclose(got, lo, abs_tol=1e-4)
    assert epsilon_lower_bound(m=1000, r=r, v=r // 2, delta=1e-5) == 0.0  # chance-level guesses reject nothing


def randomized_response_audit(eps: float, m: int, rng: np.random.Generator) -> float:
    """m canaries in or out with probability 1/2; the auditor sees each bit through randomized
    response with parameter eps (an eps-DP release of each canary) and guesses on all of them."""
    inside = rng.random(m) < 0.5
    keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    seen = np.where(keep, inside, ~inside)
    r, v = best_guesses(seen[inside].astype(float), seen[~inside].astype(float), guesses=int(seen.sum()))
    v += int((~seen & ~inside).sum())  # "out" guesses for the canaries seen as out
    return epsilon_lower_bound(m=m, r=m, v=v, delta=1e-5)


def test_audit_never_claims_more_than_a_known_epsilon_and_catches_a_broken_one():
    rng = np.random.default_rng(0)
    bounds = [randomized_response_audit(1.0, 1000, rng) for _ in range(100)]
    assert np.mean(np.array(bounds) > 1.0) <= 0.10  # valid at 95 %: exceeded in about 5 % of runs at most
    assert np.median(bounds) > 0.5  # and not vacuous: 1,000 canaries pin epsilon = 1 down to ~0.8
    assert randomized_response_audit(20.0, 1000, rng) > 4.0  # no noise to speak of: far above a claim of 1


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="v <= r <= m"):
        audit_p_value(m=10, r=20, v=5, epsilon=1.0, delta=0.0)


def test_attack_summary_against_pairwise_counts():
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.5, 1, 300), rng.normal(0, 1, 400)
    got = attack_summary(members, nonmembers, fpr=0.05)
    pairs = (members[:, None] > nonmembers[None, :]).mean() + 0.5 * (members[:, None] == nonmembers[None, :]).mean()
    assert math.isclose(got["auc"], pairs, rel_tol=1e-12)
    threshold = np.sort(nonmembers)[int(np.ceil(0.95 * (len(nonmembers) - 1)))]
    assert got["tpr_at_fpr"] == (members > threshold).mean()


def test_gan_leaks_finds_copied_records_and_not_fresh_ones():
    gen = torch.Generator().manual_seed(0)
    members, nonmembers = torch.rand(60, 1, 8, 8, generator=gen), torch.rand(60, 1, 8, 8, generator=gen)
    copies = members + 0.01 * torch.randn(60, 1, 8, 8, generator=gen)  # a generator that memorised its data
    fresh = torch.rand(200, 1, 8, 8, generator=gen)  # one that did not
    leak = attack_summary(generator_membership_scores(members, copies), generator_membership_scores(nonmembers, copies))
    assert leak["auc"] == 1.0 and leak["tpr_at_fpr"] == 1.0
    none = attack_summary(generator_membership_scores(members, fresh), generator_membership_scores(nonmembers, fresh))
    assert 0.35 < none["auc"] < 0.65


def test_logan_scores_are_the_discriminators_logits_in_batches():
    torch.manual_seed(0)
    d = Discriminator(num_classes=2, channels=1, image_size=28, ndf=8)
    x, y = torch.randn(70, 1, 28, 28), torch.randint(2, (70,))
    got = discriminator_membership_scores(d, x, y, batch=16)
    with torch.no_grad():
        want = torch.stack([d(x[i:i + 1], y[i:i + 1])[0] for i in range(70)]).numpy()
    assert np.allclose(got, want, atol=1e-5)


def test_gradient_inversion_recovers_an_unnoised_image_and_not_a_noised_one():
    """One real chest X-ray through the default D: from its exact gradient the server rebuilds
    it; after DP-sized noise (here the noise norm is 10x the gradient's) it gets noise back."""
    real_data("pneumoniamnist.npz")
    from hfgan_core.attacks import invert_upload, reconstruction_quality
    from hfgan_core.client import Objective, per_example_d_loss
    from hfgan_core.data import load_dataset
    torch.manual_seed(0)
    x, y = load_dataset("pneumoniamnist").val.tensors()
    x, y = x[:1], y[:1]
    d = Discriminator(num_classes=2, channels=1, image_size=28, ndf=16, aux_classifier=True)
    clean = torch.autograd.grad(per_example_d_loss(d, x, y, 1, Objective()).sum(), list(d.parameters()))
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in clean)))
    size = sum(g.numel() for g in clean)
    gen = torch.Generator().manual_seed(1)
    noisy = [g + torch.randn(g.shape, generator=gen) * 10 * norm / math.sqrt(size) for g in clean]
    start = reconstruction_quality(torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1, x)
    got = reconstruction_quality(invert_upload(d, clean, y, image_shape=(1, 28, 28)), x)
    lost = reconstruction_quality(invert_upload(d, noisy, y, image_shape=(1, 28, 28)), x)
    assert got["psnr"] > start["psnr"] + 10 and got["ssim"] > 0.5  # recognisable (25 dB, SSIM 0.63): it leaked
    assert lost["psnr"] < start["psnr"] + 3 and lost["ssim"] < 0.2  # no better than where it started


# ---------------------------------------------------------------------------------------------
# The canary audit inside a training run

def _audited_run(tiny, **kw):
    from conftest import tiny_config
    from hfgan_core.attacks import CanaryAudit
    from hfgan_core.train import setup
    run = setup(tiny_config(simulation_noise=True, synthetic_per_class=0, **kw), tiny)
    run.audit = CanaryAudit(run, per_hospital=300, seed=0)
    return run


def test_a_canary_adds_exactly_one_clipped_record_at_its_coordinate(tiny):
    """The same D step with and without the audit (identical hospital streams: canaries draw from
    their own): uploads differ only at inserted canaries' coordinates, by C / normaliser each."""
    from conftest import tiny_config
    from hfgan_core import engine
    from hfgan_core.client import normaliser
    from hfgan_core.train import setup
    audited = _audited_run(tiny, epsilon=2.0, rounds=2, d_steps=1)
    plain = setup(tiny_config(simulation_noise=True, synthetic_per_class=0, epsilon=2.0, rounds=2, d_steps=1), tiny)
    sel_a, sel_p = audited.clients, plain.clients
    up_a, _ = engine.private_uploads(audited, sel_a, engine.draw_batch(audited, sel_a))
    up_p, _ = engine.private_uploads(plain, sel_p, engine.draw_batch(plain, sel_p))
    c = audited.config
    sampled = 0
    for h, a, p in zip(sel_a, up_a, up_p):
        diff = torch.cat([(x - y).flatten() for x, y in zip(a, p)]).double()
        moved = torch.nonzero(diff.abs() > 1e-6).flatten()
        unit = c.max_grad_norm / normaliser(c.batch_size, h.n_examples, c.n_fakes)
        assert set(moved.tolist()) <= set(audited.audit.coords[h.cid][audited.audit.inside[h.cid]].tolist())
        assert torch.allclose(diff[moved], torch.full_like(diff[moved], unit), rtol=1e-4)
        q = min(1.0, c.batch_size / h.n_examples)
        n_in = int(audited.audit.inside[h.cid].sum())
        assert abs(len(moved) - q * n_in) < 4 * math.sqrt(n_in * q * (1 - q)) + 1  # each joins w.p. q
        sampled += len(moved)
    assert sampled > 0


def test_audit_stays_below_the_claim_and_catches_a_mechanism_without_noise(tiny, monkeypatch):
    """A small run at epsilon = 1: the one-run lower bound stays below the claim; the same run
    with the noise switched off behind the accountant's back is caught far above it."""
    from hfgan_core import engine

    def audit(**kw):
        run = _audited_run(tiny, epsilon=1.0, rounds=15, d_steps=2, **kw)
        for _ in range(run.config.rounds):
            engine.train_round(run)
        claimed = max(h.budget.update_epsilon() for h in run.clients)
        return run.audit.result(delta=run.config.delta)["epsilon_lower"], claimed

    lower, claimed = audit()
    assert claimed <= 1.0 + 1e-6 and lower <= claimed
    honest_privatize = engine.privatize
    monkeypatch.setattr(engine, "privatize", lambda sums, **kw: honest_privatize(sums, **(kw | {"noise_multiplier": 0.0})))
    broken, claimed = audit()
    assert claimed <= 1.0 + 1e-6 and broken > 2.5  # the claim says 1; the uploads show far more


def test_attack_table_end_to_end_and_bad_input(tmp_path, capsys):
    """``python -m hfgan_core attacks`` on a tiny file: one JSON per run, the table, the figure;
    bad flags get one line and exit 2, writing nothing."""
    from conftest import write_npz
    from hfgan_core.__main__ import main
    write_npz(tmp_path / "tiny.npz", n=(150, 20, 20), classes=3)
    common = ["attacks", "--dataset", "tiny", "--data-dir", str(tmp_path), "--profile", "smoke", "--clients", "3",
              "--partition", "quantity", "--alpha", "2", "--no-progress"]
    assert main(common + ["--epsilon", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--epsilon must be positive" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(common + ["--profile", "huge", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown profile" in capsys.readouterr().err
    out = tmp_path / "res"
    assert main(common + ["--seeds", "0", "1", "--epsilon", "inf", "2", "--out", str(out)]) == 0
    runs = sorted(p.name for p in (out / "privacy_attacks").glob("eps*.json"))
    assert runs == ["eps2-seed0.json", "eps2-seed1.json", "epsinf-seed0.json", "epsinf-seed1.json"]
    table = (out / "table4_privacy_attacks.md").read_text()
    for attack in ("D of round 1", "final D", "LOGAN", "GAN-Leaks", "Canary audit"):
        assert sum(attack in line for line in table.splitlines() if line.startswith("| ")) == 2  # one per epsilon
    assert (out / "figures" / "table4_privacy_attacks_inversion.png").stat().st_size > 0
    import json
    report = json.loads((out / "privacy_attacks" / "attacks.json").read_text())
    by_eps = {float(r["epsilon_target"]): r for r in report["runs"] if r["seed"] == 0}
    assert float(by_eps[2.0]["epsilon_claimed"]) <= 2.0 + 1e-6
    assert by_eps[2.0]["audit"]["epsilon_lower"] <= float(by_eps[2.0]["epsilon_claimed"])
    assert by_eps[float("inf")]["noise_multipliers"] == [0.0, 0.0, 0.0]  # the clipping-only control
    # runs are kept by file name: --resume reuses them under the same settings only
    before = (out / "privacy_attacks" / "eps2-seed0.json").read_text()
    assert main(common + ["--seeds", "0", "--epsilon", "2", "--out", str(out), "--resume"]) == 0
    assert (out / "privacy_attacks" / "eps2-seed0.json").read_text() == before
    capsys.readouterr()
    assert main(common + ["--seeds", "0", "--epsilon", "2", "--alpha", "3", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds attack runs made with other alpha" in err and len(err.strip().splitlines()) == 1
    assert (out / "privacy_attacks" / "eps2-seed0.json").read_text() == before  # nothing overwritten
    # a fresh run that a later step would refuse is refused before it clears the old runs or their settings
    settings = (out / "privacy_attacks" / "settings.json").read_text()
    for bad, message in ((["--clients", "10000"], "training examples"), (["--delta", "0.5"], "is not below 1/")):
        assert main(common + ["--seeds", "0", "--epsilon", "2", "--out", str(out), *bad]) == 2
        assert message in capsys.readouterr().err
    assert (out / "privacy_attacks" / "eps2-seed0.json").read_text() == before
    assert (out / "privacy_attacks" / "settings.json").read_text() == settings
    # a fresh run (no --resume) under other settings leaves no run of the old ones to be reused later
    assert main(common + ["--seeds", "0", "--epsilon", "2", "--alpha", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "privacy_attacks").glob("eps*.json")) == ["eps2-seed0.json"]
    capsys.readouterr()
    assert main(common + ["--seeds", "1", "--epsilon", "2", "--out", str(out), "--resume"]) == 2
    assert "holds attack runs made with other alpha" in capsys.readouterr().err


def test_clipping_only_control_clips_without_noise(tiny):
    """epsilon inf with sigma 0: every upload is exactly the clipped sum / normaliser (the
    control that keeps the mechanism but the noise); sigma 0 with a finite epsilon is refused."""
    from conftest import tiny_config
    from hfgan_core import engine
    from hfgan_core.client import normaliser
    from hfgan_core.errors import UserError
    from hfgan_core.train import setup
    with pytest.raises(UserError, match="needs --epsilon inf"):
        setup(tiny_config(epsilon=1.0, noise_multiplier=0.0), tiny)
    run = setup(tiny_config(epsilon=math.inf, noise_multiplier=0.0, synthetic_per_class=0), tiny)
    assert run.clipper is not None and all(h.budget is None for h in run.clients)
    batch = engine.draw_batch(run, run.clients)
    uploads, _ = engine.private_uploads(run, run.clients, batch)
    with run.clipper.capture():
        from hfgan_core.client import per_example_d_loss
        losses = per_example_d_loss(run.discriminator, batch.x, batch.y, batch.is_real, run.objective)
    sums, norms = run.clipper.clipped_grad_sum(losses, segments=batch.sizes)
    c = run.config
    # q_i N_i + fakes = B + fakes (B <= N_i here), fixed in advance: not the realised count, which differs
    assert any(int(n) != c.batch_size + c.n_fakes for n in batch.sizes)
    for i, h in enumerate(run.clients):
        assert c.batch_size <= h.n_examples
        scale = c.batch_size + c.n_fakes
        assert scale == normaliser(c.batch_size, h.n_examples, c.n_fakes)
        assert all(torch.allclose(u, s[i] / scale, atol=1e-7) for u, s in zip(uploads[i], sums))
    assert float(norms.max()) > c.max_grad_norm  # clipping did bite
