"""Privacy accounting, noise calibration and the Gaussian mechanism.

What is protected: one training record (one image and its label) of one hospital.
Each hospital's discriminator gradients are a Poisson-subsampled Gaussian mechanism
on its own records (sample rate q_i = B / N_i, noise multiplier sigma_i, one
mechanism call per D step it takes), so each hospital has its own epsilon_i(delta),
accounted with Opacus's PRV accountant (default) or RDP accountant over every D
step that hospital took. Rounds a hospital sits out do not touch its records and
cost it nothing. Everything downstream (server average, D, the generators, their
images) is post-processing. Dataset sizes N_i are treated as public.

Calibration searches sigma with the *same* accountant and settings that later
report epsilon, so the reported epsilon never exceeds the target by construction
(we check it anyway).
"""
from __future__ import annotations

import functools
import math
import secrets
import warnings
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.prv import (Domain, PoissonSubsampledGaussianPRV, TruncatedPrivacyRandomVariable,
                                             compose_heterogeneous, compute_safe_domain_size, discretize)
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy.fft import next_fast_len

from .errors import UserError

ACCOUNTANTS = ("prv", "rdp")  # Opacus's PRV and RDP analyses
PRV_EPS_ERROR = 0.01  # PRV returns an upper bound within this error; the same value everywhere
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS
# Opacus warns when the best RDP order is its largest (tiny epsilon at a huge sigma, e.g. an epsilon checked for
# reach, or the PRV domain's RDP bound): the epsilon is still a valid upper bound, only looser. Not the user's concern.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)


class PrivacyCurve:
    """epsilon(delta) of one hospital as a function of its D step count, for any count up to
    ``max_steps``, from one accountant set-up -- so metrics.jsonl can carry epsilon every round.

    PRV: the PRV is discretised once on the domain Opacus builds for ``max_steps`` (its safe
    truncation size L and mesh), widened symmetrically to a fast FFT length; that domain is
    safe for every smaller count too (the truncation bound and the mesh condition of Gopi et
    al. only loosen with fewer compositions). Each query is then one FFT power (Opacus's
    ``compose_heterogeneous``) and one epsilon read-out: ~10 ms instead of ~0.2 s for a fresh
    accountant. RDP is additive in steps: one RDP curve, scaled.
    """

    def __init__(self, *, noise_multiplier: float, sample_rate: float, max_steps: int, delta: float,
                 accountant: str = "prv", histogram_sigma: float | None = None) -> None:
        if accountant not in ACCOUNTANTS:
            raise UserError(f"unknown accountant '{accountant}'; choose one of {', '.join(ACCOUNTANTS)}")
        self.noise_multiplier, self.max_steps, self.delta, self.accountant = noise_multiplier, max_steps, delta, accountant
        history = []  # (sigma, q, most compositions): Opacus's history format
        self._noisy_steps = 0 < noise_multiplier < math.inf and max_steps > 0  # sigma = inf: no DP steps to count
        if self._noisy_steps:
            history.append((noise_multiplier, sample_rate, max_steps))
        if histogram_sigma:
            history.append((histogram_sigma, 1.0, 1))
        if accountant == "rdp":
            self._parts = [compute_rdp(q=q, noise_multiplier=s, steps=1, orders=RDP_ORDERS) for s, q, _ in history]
        else:
            self._parts = self._discretise(history) if history else []

    def epsilon(self, steps: int) -> float:
        if not 0 <= steps <= self.max_steps:
            raise ValueError(f"this curve covers 0..{self.max_steps} steps, not {steps}")
        if steps > 0 and self.noise_multiplier <= 0:
            return math.inf
        counts = ([steps] if self._noisy_steps else []) + [1] * (len(self._parts) - self._noisy_steps)
        used = [(part, k) for part, k in zip(self._parts, counts) if k > 0]
        if not used:
            return 0.0
        if self.accountant == "rdp":
            rdp = sum(part * k for part, k in used)
            return float(get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=self.delta)[0])
        composed = compose_heterogeneous([part for part, _ in used], [k for _, k in used])
        return float(composed.compute_epsilon(self.delta, self._delta_error, PRV_EPS_ERROR)[2])  # the upper bound

    @property
    def _delta_error(self) -> float:
        return self.delta / 1000  # Opacus's default

    def _discretise(self, history: list[tuple[float, float, int]]) -> list:
        prvs = [PoissonSubsampledGaussianPRV(q, s) for s, q, _ in history]
        counts = [k for _, _, k in history]
        size = compute_safe_domain_size(prvs=prvs, max_self_compositions=counts, eps_error=PRV_EPS_ERROR,
                                        delta_error=self._delta_error)
        dt = PRV_EPS_ERROR / math.sqrt(sum(counts) * math.log(12 / self._delta_error) / 2)  # Opacus's mesh
        n = math.ceil(size / dt)
        points = next_fast_len(2 * n + 2, real=True)
        n = (points + points % 2) // 2 - 1  # Opacus's aligned layout: t_min = -n dt, t_max = (n + 1) dt
        domain = Domain(t_min=-n * dt, t_max=(n + 1) * dt, size=2 * n + 2)
        with np.errstate(divide="ignore"):  # log(1 - q) is evaluated on both branches of a where; q = 1 is fine
            return [discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain) for p in prvs]


@functools.lru_cache(maxsize=256)
def privacy_curve(*, noise_multiplier: float, sample_rate: float, max_steps: int, delta: float,
                  accountant: str = "prv", histogram_sigma: float | None = None) -> "PrivacyCurve":
    """A shared ``PrivacyCurve`` (it is read-only once built): a hospital whose accountant is
    rebuilt, e.g. a Flower ClientApp in a fresh worker, does not discretise its PRV again."""
    return PrivacyCurve(noise_multiplier=noise_multiplier, sample_rate=sample_rate, max_steps=max_steps, delta=delta,
                        accountant=accountant, histogram_sigma=histogram_sigma)


@functools.lru_cache(maxsize=65536)  # a pure function; calibration and resumed runs ask the same questions
def compute_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "prv", histogram_sigma: float | None = None) -> float:
    """epsilon(delta) after `steps` Poisson-subsampled Gaussian steps, composed with one release
    of the label histogram through a Gaussian mechanism of noise multiplier `histogram_sigma`
    (sensitivity 1; a sample rate of 1 in the accountant's terms) when given."""
    return PrivacyCurve(noise_multiplier=noise_multiplier, sample_rate=sample_rate, max_steps=steps, delta=delta,
                        accountant=accountant, histogram_sigma=histogram_sigma).epsilon(steps)


def check_delta(delta: float, n: int, who: str) -> None:
    """Refuse delta >= 1/n: a mechanism that publishes one random record of n outright is already
    (0, 1/n)-DP, so such a delta promises nothing about any one record."""
    if n > 0 and delta >= 1 / n:
        raise UserError(f"{who} holds {n} records and --delta {delta} is not below 1/{n} = {1 / n:.3g}: at that "
                        "delta a release that publishes one record outright would qualify; use a delta far below 1/N "
                        "(e.g. 1e-5)")


SIGMA_MAX = 8192.0  # calibrate_noise doubles sigma from 1 up to this; an epsilon it does not reach is refused


def require_reachable(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
                      histogram_sigma: float | None = None) -> None:
    """Refuse an epsilon that calibrate_noise would refuse (no sigma up to SIGMA_MAX reaches it), with one
    accountant call: a command checks this before it writes anything, not after hours of other work."""
    if compute_epsilon(noise_multiplier=SIGMA_MAX, sample_rate=sample_rate, steps=steps, delta=delta,
                       accountant=accountant, histogram_sigma=histogram_sigma) > target_epsilon:
        raise UserError(_out_of_reach(target_epsilon, steps, sample_rate))


def _out_of_reach(target_epsilon: float, steps: int, sample_rate: float) -> str:
    return (f"epsilon={target_epsilon} is out of reach for {steps} steps at sample rate {sample_rate:.4f} "
            f"(needs sigma > {SIGMA_MAX:g}); train fewer rounds or raise --epsilon")


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "prv", rel_tol: float = 0.005, histogram_sigma: float | None = None) -> float:
    """Smallest sigma (to rel_tol) whose accounted epsilon after `steps` is <= target_epsilon."""
    if not target_epsilon > 0:
        raise UserError(f"--epsilon must be positive (got {target_epsilon}); use 'inf' to train without DP")
    if not 0 < delta < 1:
        raise UserError(f"--delta must lie in (0, 1) (got {delta}); 1e-5, far below 1/N, is usual")
    if math.isinf(target_epsilon) or steps == 0:
        return 0.0

    def eps(sigma: float) -> float:
        return compute_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta,
                               accountant=accountant, histogram_sigma=histogram_sigma)

    if histogram_sigma and eps(math.inf) >= target_epsilon:
        raise UserError(f"the label histogram alone (noise multiplier {histogram_sigma}) spends "
                        f"{eps(math.inf):.3f} >= epsilon={target_epsilon}; raise --histogram-sigma or --epsilon")
    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2
        if hi > SIGMA_MAX:
            raise UserError(_out_of_reach(target_epsilon, steps, sample_rate))
    lo = hi / 2 if hi > 1.0 else 0.0
    while hi - lo > rel_tol * hi:  # invariant: eps(lo) > target >= eps(hi)
        for mid in _probes(lo, hi, eps, target_epsilon, rel_tol):
            if eps(mid) <= target_epsilon:
                hi = min(hi, mid)
            else:
                lo = max(lo, mid)
    if not eps(hi) <= target_epsilon:  # the guarantee this function exists for (not an assert: -O drops those)
        raise RuntimeError(f"calibrate_noise: sigma={hi:.4g} gives epsilon={eps(hi):.4f} > target {target_epsilon} "
                           f"({accountant} accountant, {steps} steps, sample rate {sample_rate:.4g}); refusing an "
                           "uncalibrated sigma. Try --accountant rdp and report this")
    return hi


def _probes(lo: float, hi: float, eps, target: float, rel_tol: float) -> list[float]:
    """Where to evaluate next: log(eps) is close to linear in log(sigma), so interpolating
    there and probing just either side of the estimate usually closes the bracket at once
    (each accountant call costs ~0.5 s; plain bisection needs about twice as many)."""
    if lo <= 0:
        return [hi / 2]
    a, b = math.log(eps(lo)), math.log(eps(hi))  # cached calls
    if not a > b:
        return [(lo + hi) / 2]
    t = (a - math.log(target)) / (a - b)
    guess = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
    inside = [g for g in (guess * (1 - rel_tol / 3), guess * (1 + rel_tol / 3)) if lo < g < hi]
    return inside or [(lo + hi) / 2]


def max_steps_within(curve: PrivacyCurve, target_epsilon: float) -> int:
    """Largest step count the curve covers whose epsilon stays within the target (binary search)."""
    if math.isinf(target_epsilon) or curve.epsilon(curve.max_steps) <= target_epsilon:
        return curve.max_steps
    lo, hi = 0, curve.max_steps  # epsilon(lo) <= target < epsilon(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if curve.epsilon(mid) <= target_epsilon else (lo, mid)
    return lo


@dataclass
class ClientBudget:
    """One hospital's ledger: what privacy.json records for it."""
    n_examples: int
    sample_rate: float
    noise_multiplier: float
    delta: float
    accountant: str
    steps: int = 0
    epsilon: float = 0.0
    histogram_sigma: float | None = None  # noise multiplier of the one label-histogram release, if any
    max_steps: int = field(default=0, repr=False)  # steps allowed before the target is exceeded
    curve: PrivacyCurve | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.curve is None:
            self.curve = PrivacyCurve(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                                      max_steps=self.max_steps, delta=self.delta, accountant=self.accountant,
                                      histogram_sigma=self.histogram_sigma)

    def spend(self, steps: int = 1) -> None:
        self.steps += steps

    def can_spend(self, steps: int) -> bool:
        return self.steps + steps <= self.max_steps

    def update_epsilon(self) -> float:
        self.epsilon = self.curve.epsilon(self.steps)
        return self.epsilon

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("max_steps", "curve")}


def epsilon_replace_one(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                        histogram_sigma: float | None = None) -> float:
    """epsilon(delta) under replace-one adjacency (one record swapped for another, N_i fixed): the
    clipped gradient can move by 2C instead of C. Google's dp-accounting PLD accountant with its
    REPLACE_ONE relation for the Poisson-subsampled Gaussian (its Gaussian uses sensitivity 2 there,
    conservative for the label histogram, whose replace-one sensitivity is sqrt 2)."""
    import dp_accounting
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
    if steps == 0 and not histogram_sigma:
        return 0.0
    acc = PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
                        value_discretization_interval=1e-3)
    if steps:
        acc.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
                    steps)
    if histogram_sigma:
        acc.compose(dp_accounting.GaussianDpEvent(histogram_sigma))
    return float(acc.get_epsilon(delta))


def noise_seed(simulation: bool, *key: int) -> int:
    """A seed for a DP noise stream. Deployment (``simulation=False``): drawn from the operating
    system's entropy; the stream's state is kept only in a run's checkpoint (the hospitals' private
    state), so nobody who reads the released files can regenerate the noise and subtract it.
    Simulation: derived from ``key`` (the run's seed and whatever must separate streams),
    bit-reproducible, and the guarantee then assumes a trusted simulator, because anyone with
    config.json can redraw every noise value."""
    if not simulation:
        return secrets.randbits(63)
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint64)[0] >> 1)


# Settings that never change what a run computes (where it runs, how often it saves, which engine): left
# out of ``config_key`` so that, e.g., the batched engine and the reference loop draw the same noise.
NOT_NOISE = frozenset({"device", "data_dir", "checkpoint_every", "engine", "download", "synthetic_per_class"})


def config_key(*configs) -> int:
    """Every setting of one or more configs (dataclasses or dicts) as one integer seed component. Simulation runs
    that differ in any setting (a tuning grid's points, a recipe search, a sweep) must never share
    a noise draw: two releases f(D) + σz and g(D) + σ'z with the same z combine into a noise-free
    function of the data (σ'·first - σ·second), and composition over them would be no bound."""
    import hashlib
    import json
    from dataclasses import asdict, is_dataclass
    items = [{k: v for k, v in (asdict(c) if is_dataclass(c) else dict(c)).items() if k not in NOT_NOISE}
             for c in configs]
    digest = hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def float_key(x: float) -> int:
    """A float as an integer seed component (bit pattern), so epsilon = 10 and 1 never share draws."""
    return int(np.float64(x).view(np.uint64))


SIMULATION_NOTE = ("simulation noise: every DP noise draw is derived from --seed (bit-reproducible research "
                   "mode); anyone with config.json can regenerate it, so the guarantee assumes a trusted simulator")


def noisy_label_histogram(labels: np.ndarray, num_classes: int, sigma: float | None,
                          rng: np.random.Generator) -> np.ndarray:
    """Class frequencies from counts + N(0, sigma^2) (a Gaussian mechanism: one record moves one
    count by 1), clipped at zero and normalised; exact when sigma is None (no DP)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    if sigma:
        counts = np.clip(counts + rng.normal(0.0, sigma, num_classes), 0.0, None)
    return counts / counts.sum() if counts.sum() > 0 else np.full(num_classes, 1.0 / num_classes)


def gaussian_noise_like(t: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype) * std


def privatize(grad_sums: list[torch.Tensor], *, noise_multiplier: float, max_grad_norm: float,
              normaliser: float, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """(sum of clipped per-example gradients + N(0, sigma^2 C^2)) / normaliser, per parameter.

    The normaliser must not depend on the data (we use expected real count + number of
    fakes); dividing by the realised batch size would leak it.
    """
    std = noise_multiplier * max_grad_norm
    flat = torch.cat([g.flatten() for g in grad_sums])  # one draw for all parameters: a few calls, not 4 per tensor
    noisy = (flat + gaussian_noise_like(flat, std, generator)) / normaliser
    return [part.view_as(g) for part, g in zip(noisy.split([g.numel() for g in grad_sums]), grad_sums)]
