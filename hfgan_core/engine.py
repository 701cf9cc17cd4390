"""The batched round engine: one HF-GAN round for all selected hospitals at once (the default).

It computes what the reference loop (``train.train_round`` over ``client.discriminator_upload``
and ``client.generator_step``) computes, with a few large calls instead of many small ones:

(1) update D, ``d_steps`` times:
    - each selected hospital draws, from its own rng, its Poisson mask, B fake labels and z;
    - all hospitals' fakes come from one stacked call of the generators (below);
    - with DiffAugment, each hospital augments its own reals and fakes from its rng;
    - the batch [real_1, fake_1, real_2, fake_2, ...] goes through D in one forward pass and one
      backward pass; each example's gradient is clipped to norm C, and the clipped gradients are
      summed per hospital (``PerExampleClipper.clipped_grad_sum(..., segments=...)``);
    - hospital i adds its own noise N(0, sigma_i^2 C^2) from its own rng to its own sum and divides
      by its own normaliser q_i N_i + B: exactly the upload the loop computes. The server
      averages the uploads by N_i and takes an Adam step.
(2) update every G_i, ``g_steps`` times: the generators are stacked (``torch.func``) and run as
    one vmapped call; D scores all H * B fakes at once; one backward pass gives each G_i the
    gradient of its own loss, and each hospital's own Adam takes the step.

Nothing about the privacy mechanism changes: tests check that every upload equals the loop's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from . import client as cl
from . import server as sv
from .diffaugment import diff_augment
from .privacy import privatize


def stacked_generate(generators: list[torch.nn.Module], z: torch.Tensor, y: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """G_h(z[h], y[h]) for every h in one call: z (H, B, nz), y (H, B) -> images (H, B, C, S, S),
    and the stacked parameters (leaves of the graph, for a backward pass). BatchNorm statistics
    are per generator, as in H separate calls, and written back to each generator."""
    params, buffers = stack_module_state(generators)

    def one(p: dict, b: dict, z_h: torch.Tensor, y_h: torch.Tensor) -> torch.Tensor:
        return functional_call(generators[0], (p, b), (z_h, y_h))

    x = vmap(one)(params, buffers, z, y)
    with torch.no_grad():  # running statistics were updated on the stacked copies
        for h, g in enumerate(generators):
            for name, buf in g.named_buffers():
                buf.copy_(buffers[name][h])
    return x, params


@dataclass
class DBatch:
    """One D step's examples from all selected hospitals, hospital after hospital (one segment each)."""
    x: torch.Tensor  # (sum_i n_i + H B, C, S, S): real_1, fake_1, real_2, fake_2, ...
    y: torch.Tensor
    is_real: torch.Tensor  # (sum_i n_i + H B,) bool
    sizes: list[int]  # n_i + B per hospital


def draw_batch(run, selected: list[cl.Client]) -> DBatch:
    """Each hospital's Poisson batch, fake labels and z, from its own rng (as in the loop); all
    fakes from one stacked generator call."""
    B, F = run.config.batch_size, run.config.n_fakes
    masks = [cl.poisson_mask(h, cl.sample_rate(B, h.n_examples)) for h in selected]
    y_fake = torch.stack([cl.fake_labels(h, F) for h in selected])  # (H, F)
    z = torch.stack([cl.noise_z(h, F) for h in selected])  # (H, F, nz)
    with torch.no_grad():
        x_fake, _ = stacked_generate([h.generator for h in selected], z, y_fake)  # (H, F, C, S, S)
    xs, ys, reals, sizes = [], [], [], []
    for h, mask, xf, yf in zip(selected, masks, x_fake, y_fake):
        n_real = int(mask.sum())
        x = torch.cat([h.images[mask], xf])
        xs.append(diff_augment(x, h.rng) if run.objective.diffaugment else x)  # after z, before noise: as the loop
        ys += [h.labels[mask], yf]
        reals.append(torch.arange(n_real + F, device=yf.device) < n_real)
        sizes.append(n_real + F)
    return DBatch(torch.cat(xs), torch.cat(ys), torch.cat(reals), sizes)


def private_uploads(run, selected: list[cl.Client], batch: DBatch) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Every selected hospital's DP upload from one forward and one backward pass, and the
    per-example losses. Upload i = (hospital i's clipped sum + N(0, sigma_i^2 C^2)) / (q_i N_i + B)."""
    c = run.config
    with run.clipper.capture():
        losses = cl.per_example_d_loss(run.discriminator, batch.x, batch.y, batch.is_real, run.objective)
    sums, _ = run.clipper.clipped_grad_sum(losses, segments=batch.sizes)  # each (H, *param.shape)
    if run.audit is not None:  # a privacy audit's canaries join each hospital's clipped sum
        run.audit.insert(sums, selected)
    uploads = [privatize([s[i] for s in sums], noise_multiplier=h.budget.noise_multiplier if h.budget else 0.0,
                         max_grad_norm=c.max_grad_norm, normaliser=cl.normaliser(c.batch_size, h.n_examples, c.n_fakes),
                         generator=h.rng)
               for i, h in enumerate(selected)]
    if run.audit is not None:  # ... and the auditor, on the server, scores them on the uploads
        run.audit.observe(uploads, selected)
    return uploads, losses.detach()


def plain_gradient(run, selected: list[cl.Client], batch: DBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Without DP: sum_i w_i (hospital i's gradient sum) / (q_i N_i + B) in one backward pass,
    the same average of the same uploads as the loop."""
    c = run.config
    losses = cl.per_example_d_loss(run.discriminator, batch.x, batch.y, batch.is_real, run.objective)
    weights = sv.aggregation_weights([h.n_examples for h in selected])
    coef = torch.cat([torch.full((n,), w / cl.normaliser(c.batch_size, h.n_examples, c.n_fakes), device=losses.device)
                      for n, w, h in zip(batch.sizes, weights, selected)])
    return list(torch.autograd.grad((losses * coef).sum(), list(run.discriminator.parameters()))), losses.detach()


def discriminator_step(run, selected: list[cl.Client]) -> list[float]:
    """(1) one D step from all selected hospitals; returns D's mean loss on each one's fakes."""
    batch = draw_batch(run, selected)
    if run.clipper is None:
        grads, losses = plain_gradient(run, selected, batch)
    else:
        uploads, losses = private_uploads(run, selected, batch)
        grads = sv.aggregate(uploads, [h.n_examples for h in selected])
    sv.apply_gradient(run.discriminator, run.d_optimizer, grads)
    for h in selected:
        if h.budget is not None:
            h.budget.spend()
    return losses[~batch.is_real].view(len(selected), -1).mean(1).tolist()


def generator_step(run, selected: list[cl.Client]) -> list[float]:
    """(2) one step of every selected G_i against D, in one stacked call; no real data is read."""
    obj, B = run.objective, run.config.batch_size
    batches = [cl.generator_batch(h.generator, B, obj, h.rng) for h in selected]
    z, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])  # (H, B, nz), (H, B)
    x, params = stacked_generate([h.generator for h in selected], z, y)
    losses = cl.generator_losses(run.discriminator, x, y, z, obj, [h.rng for h in selected])  # (H,)
    grads = torch.autograd.grad(losses.sum(), list(params.values()))  # G_i's gradient sits in row i
    for i, h in enumerate(selected):
        for p, g in zip(h.generator.parameters(), grads):
            p.grad = g[i].contiguous()  # vmap hands Linear weights' rows back transposed; Adam wants p's layout
        h.g_optimizer.step()
        if h.ema is not None:
            cl.update_ema(h.ema, h.generator, h.ema_decay)
    return losses.detach().tolist()


def train_round(run) -> dict:
    """One HF-GAN round with the batched engine; the same contract as ``train.train_round``."""
    from .train import check_budgets, round_line
    chosen = run.schedule[run.round]
    selected = [run.clients[i] for i in chosen]
    check_budgets(run, selected)
    d_fake = [v for _ in range(run.config.d_steps) for v in discriminator_step(run, selected)]
    g_losses = [v for _ in range(run.config.g_steps) for v in generator_step(run, selected)]
    run.round += 1
    return round_line(run, chosen, float(np.mean(d_fake)), g_losses)
