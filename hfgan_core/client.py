"""A hospital: its private images, its own generator G_i, and the two things it does per round.

(1) ``discriminator_upload``: D's loss gradient on a Poisson-sampled batch of real
    images plus a fixed number of the hospital's own fakes, clipped per example,
    summed, noised and normalised *here*, so only a DP gradient leaves the hospital.
(2) ``generator_step``: update G_i against the (already DP) discriminator. This step
    never reads ``images`` or ``labels``: G_i inherits D's privacy by post-processing.

The loss, with D(x, y) = sigmoid(logit):
    L_D = -[ sum_real log D(x, y) + sum_fake log(1 - D(G_i(z, y), y)) ] / normaliser
    L_G = -mean_fake log D(G_i(z, y), y)                           (non-saturating)
With an AC-GAN head and weight lambda, L_D adds lambda * CE(class | x) on real examples and
L_G adds lambda * CE(y | G_i(z, y)); each example's whole loss is clipped as one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clipping import PerExampleClipper
from .models import Generator
from .privacy import ClientBudget, privatize


@dataclass
class Client:
    cid: int
    images: torch.Tensor  # (N_i, C, H, W) in [-1, 1]; never leaves this object
    labels: torch.Tensor  # (N_i,)
    generator: Generator
    g_optimizer: torch.optim.Optimizer
    budget: ClientBudget | None  # None when training without DP
    ema: Generator | None = None  # exponential moving average of G_i's weights, used for sampling
    ema_decay: float = 0.0
    fake_label_probs: torch.Tensor | None = None  # released (noisy) label frequencies; None = uniform

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


def fake_labels(client: Client, n: int) -> torch.Tensor | None:
    """Labels for D's fakes: the hospital's released label frequencies, so that real and fake
    batches share one label marginal and D cannot score a pair by its label alone."""
    if client.fake_label_probs is None:
        return None
    return torch.multinomial(client.fake_label_probs, n, replacement=True).to(client.images.device)


def poisson_batch(client: Client, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each record joins independently with probability q: the sampling the accountant assumes."""
    mask = torch.rand(client.n_examples, device=client.images.device) < q
    return client.images[mask], client.labels[mask]  # (~q N_i, C, H, W), (~q N_i,)


def discriminator_upload(client: Client, discriminator: nn.Module, clipper: PerExampleClipper | None, *,
                         batch_size: int, max_grad_norm: float, aux_weight: float = 0.0
                         ) -> tuple[list[torch.Tensor], float]:
    """The noisy, normalised D gradient this client sends, and D's mean loss on its fakes.

    The number of fakes is ``batch_size`` whatever the real batch size turned out to be: tying
    it to the realised real count would let one record add a second clipped term. The
    normaliser (expected real count + fakes) is fixed for the same reason.
    """
    q = sample_rate(batch_size, client.n_examples)
    real = poisson_batch(client, q)
    with torch.no_grad():
        fake = client.generator.sample(batch_size, y=fake_labels(client, batch_size))  # (B, C, H, W), (B,)
    sigma = client.budget.noise_multiplier if client.budget is not None else 0.0
    return discriminator_gradient(discriminator, clipper, real, fake, normaliser=q * client.n_examples + batch_size,
                                  noise_multiplier=sigma, max_grad_norm=max_grad_norm, aux_weight=aux_weight)


def per_example_d_loss(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, n_real: int,
                       aux_weight: float = 0.0) -> torch.Tensor:
    """(B,) losses: real/fake BCE, plus the weighted class cross-entropy on real examples."""
    logits, class_logits = discriminator.forward_with_aux(x, y)
    target = torch.zeros_like(logits)
    target[:n_real] = 1.0
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if class_logits is not None and aux_weight > 0:
        ce = F.cross_entropy(class_logits, y, reduction="none")
        losses = losses + aux_weight * ce * (target > 0)
    return losses


def discriminator_gradient(discriminator: nn.Module, clipper: PerExampleClipper | None,
                           real: tuple[torch.Tensor, torch.Tensor], fake: tuple[torch.Tensor, torch.Tensor], *,
                           normaliser: float, noise_multiplier: float, max_grad_norm: float,
                           aux_weight: float = 0.0) -> tuple[list[torch.Tensor], float]:
    """grad L_D on given real and fake batches: clipped + noised when ``clipper`` is given, else plain."""
    x = torch.cat([real[0], fake[0]])  # (n_real + B, C, H, W)
    y = torch.cat([real[1], fake[1]])
    n_real = len(real[1])
    if clipper is None:
        losses = per_example_d_loss(discriminator, x, y, n_real, aux_weight)
        grads = list(torch.autograd.grad(losses.sum() / normaliser, list(discriminator.parameters())))
    else:
        with clipper.capture():
            losses = per_example_d_loss(discriminator, x, y, n_real, aux_weight)  # (n_real + B,)
        sums, _ = clipper.clipped_grad_sum(losses)
        grads = privatize(sums, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                          normaliser=normaliser)
    # Only the loss on fakes is reported: a loss on real images would be an un-noised release.
    return [g.detach() for g in grads], float(losses.detach()[n_real:].mean())


def generator_loss(generator: Generator, discriminator: nn.Module, *, batch_size: int,
                   aux_weight: float = 0.0) -> torch.Tensor:
    """Non-saturating loss of G on a fresh batch of fakes (+ the AC-GAN class term); no real data."""
    x_fake, y_fake = generator.sample(batch_size)  # (B, C, H, W), (B,)
    logits, class_logits = discriminator.forward_with_aux(x_fake, y_fake)  # (B,), (B, K) or None
    loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    if class_logits is not None and aux_weight > 0:
        loss = loss + aux_weight * F.cross_entropy(class_logits, y_fake)
    return loss


def generator_step(client: Client, discriminator: nn.Module, *, batch_size: int, aux_weight: float = 0.0) -> float:
    """One step of G_i against D; D's parameters are not touched."""
    loss = generator_loss(client.generator, discriminator, batch_size=batch_size, aux_weight=aux_weight)
    client.g_optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=list(client.generator.parameters()))
    client.g_optimizer.step()
    if client.ema is not None:
        update_ema(client.ema, client.generator, client.ema_decay)
    return float(loss.detach())


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for weights; BatchNorm statistics are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


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
