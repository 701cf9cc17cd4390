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
    assert audit_p_value(m=2 * r, r=r, v=v, epsilon=eps, delta=1e-3) >= audit_p_value(
        m=2 * r, r=r, v=v, epsilon=eps, delta=0.0)  # delta only makes the test more lenient


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
    assert (nonmembers > threshold).mean() <= 0.05
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
