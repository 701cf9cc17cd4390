"""Exploration (session 23): DiffAugment on D's real/fake term only; the AC-GAN class head sees
clean images. Recipe d5-ms-m9-da otherwise, epsilon 10. Record: scratch_diffaugment.jsonl.

Each real record now gives D two rows: its augmented image (real/fake loss, projection included)
and its clean image (class cross-entropy only). Each of the two rows is clipped to C/2, so the
record's whole gradient still has norm <= C and the accountant's sensitivity is unchanged; fake
rows (no record) are clipped to C as before. G's real/fake term scores augmented fakes, its class
term clean fakes. Patches the batched engine (the default) only.

Usage (from the repository root): python results/recipe_search/scratch_diffaugment_realfake.py DATASET SEED [symmetric]
("symmetric": fake rows clipped to C/2 as well, so that D's real and fake terms have equal weight.)
"""
import sys, json
sys.path.insert(0, "benchmarks")
import torch
import torch.nn.functional as F
from pathlib import Path
import hfgan_core.client as cl
import hfgan_core.engine as en
from hfgan_core.diffaugment import diff_augment
from hfgan_core.privacy import privatize
import hfgan_core.server as sv
import recipe_search as rs

torch.set_num_threads(1)
SYMMETRIC = len(sys.argv) > 3 and sys.argv[3] == "symmetric"  # fake rows at C/2 too, as each real row


def draw_batch(run, selected):
    B, Fk = run.config.batch_size, run.config.n_fakes
    masks = [cl.poisson_mask(h, cl.sample_rate(B, h.n_examples)) for h in selected]
    y_fake = torch.stack([cl.fake_labels(h, Fk) for h in selected])
    z = torch.stack([cl.noise_z(h, Fk) for h in selected])
    with torch.no_grad():
        x_fake, _ = en.stacked_generate([h.generator for h in selected], z, y_fake)
    xs, ys, reals, kinds, sizes = [], [], [], [], []
    for h, mask, xf, yf in zip(selected, masks, x_fake, y_fake):
        n = int(mask.sum())
        xr = h.images[mask]
        xs += [diff_augment(torch.cat([xr, xf]), h.rng), xr]  # augmented real+fake rows, then clean real rows
        ys += [h.labels[mask], yf, h.labels[mask]]
        reals.append(torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(Fk, dtype=torch.bool),
                                torch.ones(n, dtype=torch.bool)]))
        kinds.append(torch.cat([torch.zeros(n + Fk, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]))  # class rows
        sizes.append(2 * n + Fk)
    b = en.DBatch(torch.cat(xs), torch.cat(ys), torch.cat(reals), sizes)
    b.class_rows = torch.cat(kinds)
    return b


def row_losses(D, batch, objective):
    logits, class_logits = D.forward_with_aux(batch.x, batch.y)
    rf = F.binary_cross_entropy_with_logits(logits, batch.is_real.to(logits.dtype), reduction="none")
    ce = F.cross_entropy(class_logits, batch.y, reduction="none")
    return torch.where(batch.class_rows, objective.aux_weight * ce, rf)


def private_uploads(run, selected, batch):
    c = run.config
    with run.clipper.capture():
        losses = row_losses(run.discriminator, batch, run.objective)
    # a real record's two rows at C/2 each (norm of their sum <= C); fake rows at C
    fake_bound = c.max_grad_norm / 2 if SYMMETRIC else c.max_grad_norm
    bound = torch.where(batch.is_real, c.max_grad_norm / 2, fake_bound).to(losses.dtype)
    saved, run.clipper.max_grad_norm = run.clipper.max_grad_norm, bound
    try:
        sums, _ = run.clipper.clipped_grad_sum(losses, segments=batch.sizes)
    finally:
        run.clipper.max_grad_norm = saved
    uploads = [privatize([s[i] for s in sums], noise_multiplier=h.budget.noise_multiplier if h.budget else 0.0,
                         max_grad_norm=c.max_grad_norm, normaliser=cl.normaliser(c.batch_size, h.n_examples, c.n_fakes),
                         generator=h.rng)
               for i, h in enumerate(selected)]
    rf_only = losses.detach().clone()
    rf_only[batch.class_rows] = 0.0
    return uploads, rf_only


def discriminator_step(run, selected):
    assert run.clipper is not None, "the scratch patch covers DP runs only"
    batch = draw_batch(run, selected)
    uploads, losses = private_uploads(run, selected, batch)
    sv.apply_gradient(run.discriminator, run.d_optimizer, sv.aggregate(uploads, [h.n_examples for h in selected]))
    for h in selected:
        h.budget.spend()
    return losses[~batch.is_real].view(len(selected), -1).mean(1).tolist()


def generator_losses(D, x_fake, y_fake, z, objective, rngs=None):
    h, b = y_fake.shape
    seen = torch.stack([diff_augment(x, rng) for x, rng in zip(x_fake, rngs)])
    logits, _ = D.forward_with_aux(seen.flatten(0, 1), y_fake.flatten())
    loss = F.binary_cross_entropy_with_logits(logits.view(h, b), torch.ones(h, b), reduction="none").mean(1)
    _, class_logits = D.forward_with_aux(x_fake.flatten(0, 1), y_fake.flatten())  # the class head: clean fakes
    loss = loss + objective.g_aux_weight * F.cross_entropy(class_logits, y_fake.flatten(), reduction="none").view(h, b).mean(1)
    half = b // 2
    dx = (x_fake[:, :half] - x_fake[:, half:2 * half]).abs().flatten(2).mean(2)
    dz = (z[:, :half] - z[:, half:2 * half]).abs().mean(2)
    return loss + objective.mode_seeking / ((dx / dz).mean(1) + 1e-5)


en.discriminator_step = discriminator_step
cl.generator_losses = generator_losses

if __name__ == "__main__":
    line = rs.run_recipe("d5-ms-m9-da", sys.argv[1], 10.0, int(sys.argv[2]), Path("results/runs/scratch-da-realfake" + ("-sym" if SYMMETRIC else "")))
    line["recipe"] = ("d5-ms-m9-da, real/fake term only; class head on clean images, real rows at C/2, fake rows at "
                      + ("C/2" if SYMMETRIC else "C") + " (scratch)")
    v = line["val"]
    print(sys.argv[1], "da-rf-only TSTR AUC %.3f macro-F1 %.3f CAS %.3f cov %s FID %.2f" % (
        v["tstr"]["auc"], v["tstr"]["macro_f1"], v["cas"], [round(c, 2) for c in v["coverage"]], v["fid"]), flush=True)
    with open("results/recipe_search/scratch_diffaugment.jsonl", "a") as f:
        f.write(json.dumps(rs.jsonable(line)) + "\n")
