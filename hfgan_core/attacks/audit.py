"""The one-run privacy audit (Steinke, Nasr & Jagielski, "Privacy auditing with one (1) training
run", NeurIPS 2023), white-box, with gradient canaries.

m canaries, each inserted into the training data with probability 1/2, independently. After
training, an auditor scores every canary and guesses "in" for the r highest scores (abstaining on
the rest). If the training run is (epsilon, delta)-DP with respect to each canary, the number v of
correct guesses is at most Binomial(r, e^eps / (1 + e^eps)) up to a delta term (their Theorem 3),
so a v that is too large for a given epsilon rejects it; the largest epsilon rejected at
confidence 1 - beta is a lower bound on the true epsilon, valid with probability >= 1 - beta.

Our canaries are records whose clipped gradient is a Dirac vector: C at one coordinate of D's
parameters, 0 elsewhere (Nasr et al. 2023's strongest canary for DP-SGD). An inserted canary joins
its hospital's Poisson batches with the same rate q as every record, so the run must be
(epsilon, delta)-DP for it exactly as for a real image. The auditor is the server: it sees each
upload and scores a canary by the likelihood ratio of "in" vs "out" of the values at its
coordinate -- the most powerful test of one subsampled Gaussian step.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import binom

from ..client import normaliser, sample_rate


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


GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # declared before the run; Bonferroni over them


def audit_epsilon(scores: np.ndarray, inside: np.ndarray, *, delta: float, confidence: float = 0.95,
                  fractions: tuple[float, ...] = GUESS_FRACTIONS) -> dict:
    """The audit's epsilon lower bound from canary scores and the truth (which were inserted):
    guess "in" on the top r = fraction * m for every declared fraction, each tested at
    (1 - confidence) / len(fractions) (Bonferroni), and keep the largest bound."""
    m = len(scores)
    beta = (1 - confidence) / len(fractions)
    best = {"epsilon_lower": 0.0, "guesses": 0, "correct": 0}
    for f in fractions:
        r, v = best_guesses(scores[inside], scores[~inside], guesses=max(1, int(f * m)))
        eps = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, confidence=1 - beta)
        if eps > best["epsilon_lower"] or best["guesses"] == 0:
            best = {"epsilon_lower": eps, "guesses": r, "correct": v}
    ceiling = max(epsilon_lower_bound(m=m, r=r, v=r, delta=delta, confidence=1 - beta)
                  for r in (max(1, int(f * m)) for f in fractions) if r <= inside.sum())
    return best | {"canaries": m, "inserted": int(inside.sum()), "confidence": confidence, "delta": delta,
                   "ceiling": ceiling}  # what these canaries would show if every guess were right


class CanaryAudit:
    """Dirac gradient canaries planted in every hospital, and the server's running scores.

    ``insert`` runs on the hospital's side between clipping and noise (the engine calls it): each
    of the hospital's inserted canaries joins this step's batch with probability q_i and adds C at
    its coordinate of the clipped sum. ``observe`` runs on the server's side on the uploads: it adds
    each canary's log likelihood ratio for this step,
        log(1 - q + q exp((2x - 1) / (2 sigma^2))),  x = upload at the coordinate * normaliser / C,
    (the sum of x when sigma = 0, where the ratio is undefined). Canaries draw from the audit's own
    generator, so planting them changes no hospital's stream."""

    def __init__(self, run, *, per_hospital: int, seed: int = 0) -> None:
        if run.clipper is None:
            raise ValueError("canaries are clipped records: audit a run with DP or clipping only (sigma = 0)")
        params = list(run.discriminator.parameters())
        sizes = [p.numel() for p in params]
        hospitals, c = run.clients, run.config
        total, count = sum(sizes), per_hospital * len(hospitals)
        if count > total:
            raise ValueError(f"{count} canaries need as many distinct coordinates; D has only {total}")
        device = params[0].device
        self.rng = torch.Generator(device=device).manual_seed(seed)
        self.C = c.max_grad_norm
        offsets = torch.tensor([0] + sizes, device=device).cumsum(0)  # parameter p owns [off_p, off_p+1)
        coords = torch.randperm(total, generator=self.rng, device=device)[:count].view(len(hospitals), per_hospital)
        self.coords = {h.cid: coords[i] for i, h in enumerate(hospitals)}  # flat indices into D's parameters
        self.groups = {cid: _by_parameter(flat, offsets) for cid, flat in self.coords.items()}
        self.inside = {h.cid: torch.rand(per_hospital, generator=self.rng, device=device) < 0.5 for h in hospitals}
        self.rate = {h.cid: sample_rate(c.batch_size, h.n_examples) for h in hospitals}
        self.sigma = {h.cid: h.budget.noise_multiplier if h.budget else 0.0 for h in hospitals}
        self.normaliser = {h.cid: normaliser(c.batch_size, h.n_examples, c.n_fakes) for h in hospitals}
        self.scores = {h.cid: torch.zeros(per_hospital, device=device, dtype=torch.float64) for h in hospitals}
        self.steps = {h.cid: 0 for h in hospitals}

    def insert(self, sums: list[torch.Tensor], selected: list) -> None:
        """Add the sampled canaries' clipped gradients to each selected hospital's segment of
        ``sums`` (each parameter (H, *shape)), in place."""
        for i, h in enumerate(selected):
            q = self.rate[h.cid]
            sampled = self.inside[h.cid] & (torch.rand(len(self.inside[h.cid]), generator=self.rng,
                                                       device=self.rng.device) < q)
            for p, local, here in self.groups[h.cid]:
                row, hit = sums[p].view(sums[p].shape[0], -1)[i], local[sampled[here]]
                row.index_add_(0, hit, torch.full(hit.shape, self.C, dtype=row.dtype, device=row.device))

    def observe(self, uploads: list[list[torch.Tensor]], selected: list) -> None:
        """The server's view: score every canary of each selected hospital on its upload."""
        for i, h in enumerate(selected):
            x = torch.cat([u.reshape(-1) for u in uploads[i]])[self.coords[h.cid]].double()
            x = x * self.normaliser[h.cid] / self.C  # one canary's contribution is 1 in these units
            q, sigma = self.rate[h.cid], self.sigma[h.cid]
            if sigma == 0:
                self.scores[h.cid] += x
            else:  # log(1 - q + q exp(a)), a = (2x - 1) / (2 sigma^2), computed stably
                a = (2 * x - 1) / (2 * sigma ** 2)
                self.scores[h.cid] += torch.logaddexp(torch.full_like(a, math.log1p(-q)) if q < 1 else
                                                      torch.full_like(a, -math.inf), a + math.log(q))
            self.steps[h.cid] += 1

    def result(self, *, delta: float, confidence: float = 0.95) -> dict:
        """The epsilon lower bound over all hospitals' canaries (each run is DP for each canary)."""
        scores = torch.cat([self.scores[c] for c in self.scores]).cpu().numpy()
        inside = torch.cat([self.inside[c] for c in self.inside]).cpu().numpy()
        return audit_epsilon(scores, inside, delta=delta, confidence=confidence) | {
            "uploads_observed": sum(self.steps.values())}


def _by_parameter(flat: torch.Tensor, offsets: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Canaries' flat coordinates grouped by parameter: (parameter index, indices within it,
    which of the canaries they are), so a step adds each group with one ``index_add_``."""
    which = torch.searchsorted(offsets, flat, right=True) - 1
    return [(p, flat[which == p] - offsets[p], which == p) for p in which.unique().tolist()]
