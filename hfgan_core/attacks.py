"""Measuring what the noise buys: attacks on HF-GAN's outputs and an empirical privacy audit.

So far: gradient inversion of one hospital's upload (Inverting Gradients, Geiping et al. 2020:
the server, who knows D, searches for images whose D-loss gradient points the way the upload
does), membership inference against the released generators (GAN-Leaks, Chen et al. 2020: a
training record lies nearer the synthetic images than a record the GAN never saw) and against the
released discriminator (LOGAN, Hayes et al. 2019: D scores its training records as "real" more
confidently), the statistics every attack reports (ROC AUC, true-positive rate at a low
false-positive rate), and the one-run audit's conversion from canary guesses to a lower bound on
epsilon (Steinke, Nasr & Jagielski, "Privacy auditing with one (1) training run", NeurIPS 2023).

The audit: m canaries, each inserted into the training data with probability 1/2, independently.
After training, an auditor scores every canary and guesses "in" for the r_+ highest scores and
"out" for the r_- lowest (abstaining on the rest, r = r_+ + r_-). If the training run is
(epsilon, delta)-DP with respect to each canary, the number v of correct guesses is at most
Binomial(r, e^eps / (1 + e^eps)) up to a delta term (their Theorem 3), so a v that is too large
for a given epsilon rejects it; the largest epsilon rejected at confidence 1 - beta is a lower
bound on the true epsilon, valid with probability >= 1 - beta.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from .client import Objective, per_example_d_loss, total_variation
from .quality import nearest_distances


def invert_upload(discriminator: torch.nn.Module, upload: list[torch.Tensor], labels: torch.Tensor, *,
                  image_shape: tuple[int, int, int], steps: int = 400, lr: float = 0.05, tv_weight: float = 1e-3,
                  objective: Objective = Objective(), seed: int = 0) -> torch.Tensor:
    """Images x (len(labels), C, H, W) in [-1, 1] whose summed real-image D loss has a gradient of
    the same direction as ``upload`` (cosine distance, plus a total-variation prior), found by Adam
    from uniform noise. The attacker knows D, the labels and how many images the batch holds: a
    strong server. Per-example clipping only rescales a lone example's gradient, so for one image
    noise is the only defence."""
    params = list(discriminator.parameters())
    target = [u.detach() for u in upload]
    target_norm = torch.sqrt(sum((t ** 2).sum() for t in target))
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(len(labels), *image_shape, generator=gen) * 2 - 1).to(labels.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        losses = per_example_d_loss(discriminator, x, labels, len(labels), objective)  # all "real"
        grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, target))
        cosine = dot / (torch.sqrt(sum((g ** 2).sum() for g in grads)) * target_norm + 1e-12)
        opt.zero_grad(set_to_none=True)
        (1 - cosine + tv_weight * total_variation(x).mean()).backward(inputs=[x])
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
    return x.detach()


def reconstruction_quality(reconstructed: torch.Tensor, original: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, images in [-1, 1]) and SSIM (torchmetrics) of a reconstruction, mean over images."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    a, b = (reconstructed + 1) / 2, (original + 1) / 2  # to [0, 1]
    mse = ((a - b) ** 2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-12))).mean()
    return {"psnr": float(psnr), "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0))}


def generator_membership_scores(records: torch.Tensor, synthetic: torch.Tensor) -> np.ndarray:
    """GAN-Leaks, full black-box: minus each record's pixel distance to its nearest synthetic
    image (higher = more likely a training member)."""
    return -nearest_distances(records, synthetic)


@torch.no_grad()
def discriminator_membership_scores(discriminator: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                                    batch: int = 512) -> np.ndarray:
    """LOGAN, white-box: D's real/fake logit for each (image, label) (higher = more likely a member)."""
    device = next(discriminator.parameters()).device
    return torch.cat([discriminator(images[i:i + batch].to(device), labels[i:i + batch].to(device)).cpu()
                      for i in range(0, len(images), batch)]).numpy()


def attack_summary(members: np.ndarray, nonmembers: np.ndarray, *, fpr: float = 0.01) -> dict[str, float]:
    """ROC AUC of member vs non-member scores, and the share of members above the score that only
    a fraction ``fpr`` of non-members exceed (TPR at that FPR; 0.01 at random guessing)."""
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    threshold = np.quantile(nonmembers, 1 - fpr, method="higher")
    return {"auc": float(roc_auc_score(labels, np.concatenate([members, nonmembers]))),
            "tpr_at_fpr": float(np.mean(members > threshold)), "fpr": fpr,
            "members": len(members), "nonmembers": len(nonmembers)}


def audit_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] for an (epsilon, delta)-DP run with m canaries: the
    binomial tail with success probability e^eps / (1 + e^eps), plus Steinke et al.'s delta term
    2 m delta max_i (P[Binomial = v - i .. v - 1 summed] / i)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m (got v={v}, r={r}, m={m})")
    p = math.exp(epsilon) / (1 + math.exp(epsilon)) if epsilon < 700 else 1.0
    tail = float(binom.sf(v - 1, r, p))  # P[W >= v]
    if v == 0 or delta == 0:
        return min(1.0, tail)
    i = np.arange(1, v + 1)
    mass = np.cumsum(binom.pmf(v - i, r, p))  # mass[i - 1] = P[v - i <= W <= v - 1]
    return min(1.0, tail + 2 * m * delta * float(np.max(mass / i)))


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float = 0.95,
                        max_epsilon: float = 100.0) -> float:
    """The largest epsilon the guesses reject at ``confidence``: with probability >= confidence
    the run's true epsilon (at this delta) is at least this. 0 when nothing is rejected."""
    beta = 1 - confidence

    def excess(eps: float) -> float:  # > 0 while eps is rejected (p-value below beta)
        return beta - audit_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta)

    if excess(0.0) <= 0:
        return 0.0
    if excess(max_epsilon) > 0:
        return max_epsilon
    return float(brentq(excess, 0.0, max_epsilon, xtol=1e-6))


def best_guesses(scores_in: np.ndarray, scores_out: np.ndarray, *, guesses: int) -> tuple[int, int]:
    """Guess "in" for the ``guesses`` highest-scoring canaries (r = guesses, abstain on the rest);
    returns (r, v), the guesses made and how many were right. ``scores_in`` are the canaries that
    were inserted, ``scores_out`` those that were not."""
    scores = np.concatenate([scores_in, scores_out])
    truth = np.concatenate([np.ones(len(scores_in), bool), np.zeros(len(scores_out), bool)])
    top = np.argsort(-scores, kind="stable")[:guesses]
    return len(top), int(truth[top].sum())
