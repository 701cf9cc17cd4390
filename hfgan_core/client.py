"""A hospital: its private images, its own generator G_i, and the two things it does per round.

(1) ``discriminator_upload``: D's loss gradient on a Poisson-sampled batch of real
    images plus a fixed number of the hospital's own fakes, clipped per example,
    summed, noised and normalised *here*, so only a DP gradient leaves the hospital.
(2) ``generator_step``: update G_i against the (already DP) discriminator. This step
    never reads ``images`` or ``labels``: G_i inherits D's privacy by post-processing.

These per-hospital functions are the reference the walkthrough reads; ``engine`` computes the
same round for all hospitals at once. Every random draw of a hospital (Poisson mask, fake
labels and z, DiffAugment's shifts and cut-outs, the DP noise) comes from its own ``rng``, in the
order written here.

The loss, with D(x, y) = sigmoid(logit) (``Objective.loss = "ns"``):
    L_D = -[ sum_real log D(x, y) + sum_fake log(1 - D(G_i(z, y), y)) ] / normaliser
    L_G = -mean_fake log D(G_i(z, y), y)                           (non-saturating)
or the hinge loss (``"hinge"``): L_D = sum_real relu(1 - l) + sum_fake relu(1 + l), L_G = -mean l.
With an AC-GAN head, L_D adds aux_weight * CE(class | x) on real examples and L_G adds
g_aux_weight * CE(y | G_i(z, y)); each example's whole loss is clipped as one. The mode-seeking
term (Mao et al. 2019) asks G_i for different images from different z of the same class, and the
optional smoothness term penalises pixel-to-pixel jumps in its images; neither reads real data,
so neither costs privacy. With ``Objective.diffaugment`` D scores augmented images, real and fake
alike, in both losses; the mode-seeking and smoothness terms see G's images as drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clipping import PerExampleClipper
from .diffaugment import diff_augment
from .models import Generator
from .privacy import ClientBudget, privatize

LOSSES = ("ns", "hinge")


@dataclass(frozen=True)
class Objective:
    """What D and the G_i minimise. Every term of D's loss is per example, so clipping covers it."""
    loss: str = "ns"  # ns: non-saturating cross-entropy (DCGAN); hinge (SNGAN, BigGAN)
    aux_weight: float = 1.0  # AC-GAN class term in D's loss, on real examples (0: no class head)
    g_aux_weight: float = 1.0  # the same term in G's loss, on its fakes
    mode_seeking: float = 0.0  # weight of G's mode-seeking term
    smoothness: float = 0.0  # weight of a total-variation penalty on G's images (no real data: free)
    diffaugment: bool = False  # D sees every image shifted and cut out (``diffaugment``), in D's and G's steps

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown GAN loss {self.loss!r}; choose one of {', '.join(LOSSES)}")


@dataclass
class Client:
    cid: int
    images: torch.Tensor  # (N_i, C, H, W) in [-1, 1], on the run's device; never leaves this object
    labels: torch.Tensor  # (N_i,)
    generator: Generator
    g_optimizer: torch.optim.Optimizer
    budget: ClientBudget | None  # None when training without DP
    ema: Generator | None = None  # exponential moving average of G_i's weights, used for sampling
    ema_decay: float = 0.0
    fake_label_probs: torch.Tensor | None = None  # released (noisy) label frequencies; None = uniform
    rng: torch.Generator | None = None  # all of this hospital's randomness, on the images' device

    @property
    def n_examples(self) -> int:
        return len(self.labels)

    @property
    def sampler(self) -> Generator:
        """The generator whose images this hospital releases: the EMA copy when kept."""
        return self.ema if self.ema is not None else self.generator


def sample_rate(batch_size: int, n_examples: int) -> float:
    """Poisson sampling rate q_i = B / N_i: each record joins a batch with probability q_i."""
    return min(1.0, batch_size / n_examples)


def normaliser(batch_size: int, n_examples: int, fakes: int | None = None) -> float:
    """Expected real count + number of fakes, q_i N_i + B: fixed in advance, so it leaks nothing."""
    return sample_rate(batch_size, n_examples) * n_examples + (batch_size if fakes is None else fakes)


def fake_labels(client: Client, n: int) -> torch.Tensor:
    """Labels for D's fakes: uniform, or the hospital's released (DP) label frequencies, so that
    real and fake batches share one label marginal."""
    device = client.images.device
    if client.fake_label_probs is None:
        return torch.randint(client.generator.num_classes, (n,), generator=client.rng, device=device)
    return torch.multinomial(client.fake_label_probs.to(device), n, replacement=True, generator=client.rng)


def poisson_mask(client: Client, q: float) -> torch.Tensor:
    """Each record joins independently with probability q: the sampling the accountant assumes."""
    return torch.rand(client.n_examples, generator=client.rng, device=client.images.device) < q


def poisson_batch(client: Client, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = poisson_mask(client, q)
    return client.images[mask], client.labels[mask]  # (~q N_i, C, H, W), (~q N_i,)


def noise_z(client: Client, n: int) -> torch.Tensor:
    return torch.randn(n, client.generator.nz, generator=client.rng, device=client.images.device)


def discriminator_upload(client: Client, discriminator: nn.Module, clipper: PerExampleClipper | None, *,
                         batch_size: int, max_grad_norm: float, objective: Objective = Objective(),
                         fakes: int | None = None) -> tuple[list[torch.Tensor], float]:
    """The noisy, normalised D gradient this client sends, and D's mean loss on its fakes.

    The number of fakes (``fakes``, default ``batch_size``) is fixed whatever the real batch size
    turned out to be: tying it to the realised real count would let one record add a second
    clipped term. The normaliser (expected real count + fakes) is fixed for the same reason.
    Fakes are functions of G_i alone (post-processing), so more of them cost no privacy: they
    raise the normaliser and so shrink the noise on the average, but not on the real part.
    """
    q = sample_rate(batch_size, client.n_examples)
    n_fake = batch_size if fakes is None else fakes
    real = poisson_batch(client, q)
    y_fake = fake_labels(client, n_fake)
    with torch.no_grad():
        fake = (client.generator(noise_z(client, n_fake), y_fake), y_fake)  # (F, C, H, W), (F,)
    sigma = client.budget.noise_multiplier if client.budget is not None else 0.0
    return discriminator_gradient(discriminator, clipper, real, fake,
                                  normaliser=normaliser(batch_size, client.n_examples, n_fake),
                                  noise_multiplier=sigma, max_grad_norm=max_grad_norm, objective=objective,
                                  generator=client.rng)


def per_example_d_loss(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, real: int | torch.Tensor,
                       objective: Objective = Objective()) -> torch.Tensor:
    """(B,) losses: real/fake loss, plus the weighted class cross-entropy on real examples.
    ``real``: the number of real examples (they come first) or a boolean mask."""
    logits, class_logits = discriminator.forward_with_aux(x, y)
    is_real = real if torch.is_tensor(real) else torch.arange(len(y), device=y.device) < real
    if objective.loss == "hinge":
        losses = torch.where(is_real, F.relu(1 - logits), F.relu(1 + logits))
    else:
        losses = F.binary_cross_entropy_with_logits(logits, is_real.to(logits.dtype), reduction="none")
    if class_logits is not None and objective.aux_weight > 0:
        ce = F.cross_entropy(class_logits, y, reduction="none")
        losses = losses + objective.aux_weight * ce * is_real
    return losses


def discriminator_gradient(discriminator: nn.Module, clipper: PerExampleClipper | None,
                           real: tuple[torch.Tensor, torch.Tensor], fake: tuple[torch.Tensor, torch.Tensor], *,
                           normaliser: float, noise_multiplier: float, max_grad_norm: float,
                           objective: Objective = Objective(), generator: torch.Generator | None = None
                           ) -> tuple[list[torch.Tensor], float]:
    """grad L_D on given real and fake batches: clipped + noised when ``clipper`` is given, else plain."""
    x = torch.cat([real[0], fake[0]])  # (n_real + B, C, H, W)
    y = torch.cat([real[1], fake[1]])
    n_real = len(real[1])
    if objective.diffaugment:  # each example alone, from the hospital's rng: clipping still bounds it
        x = diff_augment(x, generator)
    if clipper is None:
        losses = per_example_d_loss(discriminator, x, y, n_real, objective)
        grads = list(torch.autograd.grad(losses.sum() / normaliser, list(discriminator.parameters())))
    else:
        with clipper.capture():
            losses = per_example_d_loss(discriminator, x, y, n_real, objective)  # (n_real + B,)
        sums, _ = clipper.clipped_grad_sum(losses)
        grads = privatize(sums, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                          normaliser=normaliser, generator=generator)
    # Only the loss on fakes is reported: a loss on real images would be an un-noised release.
    return [g.detach() for g in grads], float(losses.detach()[n_real:].mean())


def generator_losses(discriminator: nn.Module, x_fake: torch.Tensor, y_fake: torch.Tensor, z: torch.Tensor,
                     objective: Objective = Objective(), rngs: list[torch.Generator | None] | None = None
                     ) -> torch.Tensor:
    """(H,) G losses, one per hospital, from fakes (H, B, C, S, S) with labels (H, B) and noise
    (H, B, nz): adversarial + class + mode-seeking terms, each a mean over the hospital's B fakes.
    D runs once on all H * B fakes; it has no batch-mixing layer, so that equals H separate calls.

    With mode seeking the batch holds pairs: fakes j and j + B/2 share a label and differ in z;
    the term is 1 / (mean |x_j - x_j'| / mean |z_j - z_j'|), small when different z give
    different images (Mao et al. 2019). With DiffAugment, D scores hospital h's fakes augmented
    with ``rngs[h]`` (its own rng)."""
    h, b = y_fake.shape
    seen = (torch.stack([diff_augment(x, rng) for x, rng in zip(x_fake, rngs or [None] * h)])
            if objective.diffaugment else x_fake)  # (H, B, C, S, S): what D scores
    logits, class_logits = discriminator.forward_with_aux(seen.flatten(0, 1), y_fake.flatten())
    logits = logits.view(h, b)  # (H, B)
    if objective.loss == "hinge":
        loss = -logits.mean(1)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none").mean(1)
    if class_logits is not None and objective.g_aux_weight > 0:
        ce = F.cross_entropy(class_logits, y_fake.flatten(), reduction="none").view(h, b)
        loss = loss + objective.g_aux_weight * ce.mean(1)
    if objective.mode_seeking > 0:
        half = b // 2
        dx = (x_fake[:, :half] - x_fake[:, half:2 * half]).abs().flatten(2).mean(2)  # (H, B/2)
        dz = (z[:, :half] - z[:, half:2 * half]).abs().mean(2)
        loss = loss + objective.mode_seeking / ((dx / dz).mean(1) + 1e-5)
    if objective.smoothness > 0:
        loss = loss + objective.smoothness * total_variation(x_fake).mean(1)  # (H,)
    return loss


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image: x (..., C, S, S) -> (...)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(-3).mean(-1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(-3).mean(-1))


def generator_batch(generator: Generator, batch_size: int, objective: Objective = Objective(),
                    rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, y) for a G step from ``rng``: uniform labels, in pairs (j, j + B/2) for mode seeking."""
    device = next(generator.parameters()).device
    n = (batch_size + 1) // 2 if objective.mode_seeking > 0 else batch_size
    y = torch.randint(generator.num_classes, (n,), generator=rng, device=device)
    y = y.repeat(2)[:batch_size] if objective.mode_seeking > 0 else y
    return torch.randn(batch_size, generator.nz, generator=rng, device=device), y


def generator_loss(generator: Generator, discriminator: nn.Module, *, batch_size: int,
                   objective: Objective = Objective(), rng: torch.Generator | None = None) -> torch.Tensor:
    """G's loss on a fresh batch of fakes; no real data."""
    z, y = generator_batch(generator, batch_size, objective, rng)
    return generator_losses(discriminator, generator(z, y)[None], y[None], z[None], objective, [rng])[0]


def generator_step(client: Client, discriminator: nn.Module, *, batch_size: int,
                   objective: Objective = Objective()) -> float:
    """One step of G_i against D; D's parameters are not touched, no real data is read."""
    loss = generator_loss(client.generator, discriminator, batch_size=batch_size, objective=objective,
                          rng=client.rng)
    client.g_optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=list(client.generator.parameters()))
    client.g_optimizer.step()
    if client.ema is not None:
        update_ema(client.ema, client.generator, client.ema_decay)
    return float(loss.detach())


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for weights; BatchNorm statistics are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


@torch.no_grad()
def standing_bn_stats(generator: Generator, *, batches: int = 20, batch_size: int = 256, seed: int = 0) -> None:
    """Re-estimate the generator's BatchNorm statistics for its *current* weights from its own
    samples (no real data: post-processing), before it is used in eval mode.

    The EMA generator's weights are an average, but its running statistics were copied from the
    raw generator; the mismatch shifts the class-conditional images enough to miscalibrate a
    classifier trained on them (README, research section). "Standing statistics" (BigGAN).
    """
    gen = torch.Generator(device=next(generator.parameters()).device).manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    generator.train()
    for _ in range(batches):
        generator.sample(batch_size, generator=gen)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    generator.eval()
