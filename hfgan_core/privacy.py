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
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from .errors import UserError

ACCOUNTANTS = {"prv": PRVAccountant, "rdp": RDPAccountant}
_PRV_EPS_ERROR = 0.01  # PRV returns an upper bound within this error; the same value everywhere


@functools.lru_cache(maxsize=65536)  # a pure function; calibration and resumed runs ask the same questions
def compute_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "prv", histogram_sigma: float | None = None) -> float:
    """epsilon(delta) after `steps` Poisson-subsampled Gaussian steps, composed with one release
    of the label histogram through a Gaussian mechanism of noise multiplier `histogram_sigma`
    (sensitivity 1; a sample rate of 1 in the accountant's terms) when given."""
    history = []
    if steps > 0 and not math.isinf(noise_multiplier):
        if noise_multiplier <= 0:
            return math.inf
        history.append((noise_multiplier, sample_rate, steps))
    if histogram_sigma:
        history.append((histogram_sigma, 1.0, 1))
    if not history:
        return 0.0
    acc = _accountant(accountant)
    acc.history = history
    kwargs = {"eps_error": _PRV_EPS_ERROR} if accountant == "prv" else {}
    with np.errstate(divide="ignore"):  # PRV evaluates log(1 - q) on both branches of a where; q = 1 is fine
        return float(acc.get_epsilon(delta, **kwargs))


def _accountant(name: str):
    if name not in ACCOUNTANTS:
        raise UserError(f"unknown accountant '{name}'; choose one of {', '.join(ACCOUNTANTS)}")
    return ACCOUNTANTS[name]()


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "prv", rel_tol: float = 0.005, histogram_sigma: float | None = None) -> float:
    """Smallest sigma (to rel_tol) whose accounted epsilon after `steps` is <= target_epsilon."""
    if not target_epsilon > 0:
        raise UserError(f"--epsilon must be positive (got {target_epsilon}); use 'inf' to train without DP")
    if not 0 < delta < 1:
        raise UserError(f"--delta must lie in (0, 1) (got {delta}); 1e-5 or 1/N is usual")
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
        if hi > 1e4:
            raise UserError(f"epsilon={target_epsilon} is out of reach for {steps} steps at sample rate "
                            f"{sample_rate:.4f} (needs sigma > 1e4); train fewer rounds or raise --epsilon")
    lo = hi / 2 if hi > 1.0 else 0.0
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    assert eps(hi) <= target_epsilon  # the guarantee this function exists for
    return hi


def max_steps_within(*, target_epsilon: float, delta: float, noise_multiplier: float, sample_rate: float,
                     upper: int, accountant: str = "prv", histogram_sigma: float | None = None) -> int:
    """Largest step count <= upper whose epsilon stays within the target (binary search)."""
    def ok(s: int) -> bool:
        return compute_epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=s,
                               delta=delta, accountant=accountant, histogram_sigma=histogram_sigma) <= target_epsilon
    if math.isinf(target_epsilon) or ok(upper):
        return upper
    lo, hi = 0, upper  # ok(lo) holds, ok(hi) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
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

    def spend(self, steps: int = 1) -> None:
        self.steps += steps

    def can_spend(self, steps: int) -> bool:
        return self.steps + steps <= self.max_steps

    def update_epsilon(self) -> float:
        self.epsilon = compute_epsilon(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                                       steps=self.steps, delta=self.delta, accountant=self.accountant,
                                       histogram_sigma=self.histogram_sigma)
        return self.epsilon

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("max_steps")
        return out


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
    return [(g + gaussian_noise_like(g, std, generator)) / normaliser for g in grad_sums]
