"""DP-FedAvg-GAN (Augenstein et al., ICLR 2020), re-implemented as the closest prior method.

Differences from HF-GAN that matter for the comparison:
* D is trained by DP-FedAvg (McMahan et al., 2018): each sampled hospital runs a few local
  D steps on its real images and fakes from the server's G, clips its whole model *update*
  to norm S, and the server adds N(0, z^2 S^2) to the sum before dividing by the expected
  number of hospitals. Hospitals are Poisson-sampled with rate q, as the accountant assumes.
* One generator, on the server, trained against D; it never touches client data.
* epsilon protects one whole hospital (all of its records), accounted over rounds with
  Opacus's accountant at sampling rate q. With five hospitals this unit is expensive: the
  noise on D's update dwarfs the signal. That is the method's cost, not a bug.
Our conditional models (``models``) replace the paper's unconditional ones so that its
images carry labels for the classifier.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from . import client as cl
from .models import build_models
from .privacy import calibrate_noise, compute_epsilon, config_key, float_key, noise_seed

Arrays = tuple[torch.Tensor, torch.Tensor]


@dataclass
class DPFedAvgGANConfig:
    rounds: int = 100
    client_rate: float = 1.0  # Poisson sampling rate of hospitals per round
    local_steps: int = 5  # local D steps per sampled hospital
    batch_size: int = 64
    update_clip: float = 1.0  # S: norm bound of a hospital's whole D update
    epsilon: float = 10.0  # per hospital (all its records); inf = no DP
    delta: float = 1e-5
    accountant: str = "prv"
    lr_d: float = 1e-3
    lr_g: float = 1e-3
    g_steps: int = 1  # server generator steps per round
    nz: int = 64
    ngf: int = 32
    ndf: int = 32
    aux_weight: float = 1.0
    seed: int = 0
    simulation_noise: bool = False  # True: the server's noise derived from the seed (research); False: OS entropy
    data_id: str = ""  # which data: in the simulation noise key, so runs on other data never share a draw
    device: str = "cpu"


@dataclass
class DPFedAvgGANResult:
    generator: torch.nn.Module
    noise_multiplier: float
    epsilon: float  # accounted, per hospital


def train_dpfedavg_gan(clients: list[Arrays], *, num_classes: int, config: DPFedAvgGANConfig,
                       progress=None) -> DPFedAvgGANResult:
    c = config
    torch.manual_seed(c.seed)
    channels, size = clients[0][0].shape[1], clients[0][0].shape[-1]
    generator, discriminator = build_models(num_classes=num_classes, channels=channels, image_size=size, nz=c.nz,
                                            ngf=c.ngf, ndf=c.ndf, aux_classifier=c.aux_weight > 0)
    generator, discriminator = generator.to(c.device), discriminator.to(c.device)
    clients = [(x.to(c.device), y.to(c.device)) for x, y in clients]  # moved once
    g_opt = torch.optim.Adam(generator.parameters(), lr=c.lr_g, betas=(0.5, 0.999))
    private = not math.isinf(c.epsilon)
    z = calibrate_noise(target_epsilon=c.epsilon, delta=c.delta, sample_rate=c.client_rate, steps=c.rounds,
                        accountant=c.accountant) if private else 0.0
    noise_rng = torch.Generator(device=c.device).manual_seed(noise_seed(c.simulation_noise, c.seed, 13,
                                                                         float_key(c.epsilon), config_key(c)))
    # which hospitals take part: from a private stream too (with a public seed the server's amplification
    # by sampling would be no secret), drawn on the CPU so every device samples the same hospitals
    sampling = torch.Generator().manual_seed(noise_seed(c.simulation_noise, c.seed, 14, config_key(c)))
    expected = c.client_rate * len(clients)  # fixed denominator: the realised count is data-independent
    for r in range(c.rounds):
        # (1) update D: clipped local updates, summed, noised, averaged (DP-FedAvg)
        chosen = torch.nonzero(torch.rand(len(clients), generator=sampling) < c.client_rate).flatten().tolist()
        global_state = [p.detach().clone() for p in discriminator.parameters()]
        total = [torch.zeros_like(p) for p in global_state]
        for i in chosen:
            delta = _local_update(discriminator, generator, clients[i], c)
            norm = torch.sqrt(sum((d ** 2).sum() for d in delta))
            scale = min(1.0, c.update_clip / (float(norm) + 1e-12)) if private else 1.0
            total = [t + d * scale for t, d in zip(total, delta)]
        with torch.no_grad():
            for p, g, t in zip(discriminator.parameters(), global_state, total):
                noise = torch.randn(t.shape, generator=noise_rng, device=t.device, dtype=t.dtype) * z * c.update_clip
                p.copy_(g + (t + noise) / max(expected, 1e-12))
        # (2) update the server's G against the new D
        for _ in range(c.g_steps):
            loss = cl.generator_loss(generator, discriminator, batch_size=c.batch_size,
                                     objective=cl.Objective(aux_weight=c.aux_weight, g_aux_weight=c.aux_weight))
            g_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=list(generator.parameters()))
            g_opt.step()
        if progress:
            progress(r + 1)
    eps = compute_epsilon(noise_multiplier=z, sample_rate=c.client_rate, steps=c.rounds, delta=c.delta,
                          accountant=c.accountant) if private else math.inf
    cl.standing_bn_stats(generator, seed=c.seed)  # released like HF-GAN's generators: post-processing, no data
    return DPFedAvgGANResult(generator, z, eps)


def _local_update(discriminator: torch.nn.Module, generator: torch.nn.Module, data: Arrays,
                  c: DPFedAvgGANConfig) -> list[torch.Tensor]:
    """A hospital's local D training; returns (local weights - global weights)."""
    local = copy.deepcopy(discriminator)
    opt = torch.optim.Adam(local.parameters(), lr=c.lr_d, betas=(0.5, 0.999))
    x, y = data
    for _ in range(c.local_steps):
        idx = torch.randint(len(y), (min(c.batch_size, len(y)),)).to(y.device)
        with torch.no_grad():
            fake = generator.sample(len(idx))
        xb, yb = torch.cat([x[idx], fake[0]]), torch.cat([y[idx], fake[1]])
        loss = cl.per_example_d_loss(local, xb, yb, len(idx), cl.Objective(aux_weight=c.aux_weight)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [(p - g).detach() for p, g in zip(local.parameters(), discriminator.parameters())]
