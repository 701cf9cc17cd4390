"""Per-example clipping and the sensitivity of one client's upload, against brute-force loops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus.validators import ModuleValidator
from torch import nn

from conftest import DEVICES
from hfgan_core.client import Objective, discriminator_gradient, per_example_d_loss
from hfgan_core import clipping
from hfgan_core.clipping import PerExampleClipper
from hfgan_core.models import Discriminator, Generator, build_models

C = 0.7


def example_loss(model: nn.Module, x, y, target) -> torch.Tensor:
    """One example's D loss written out again: BCE on the real/fake logit, plus (default D) the
    AC-GAN class cross-entropy when the example is real."""
    logit = model(x, y)
    loss = F.binary_cross_entropy_with_logits(logit, target, reduction="sum")
    if model.aux is not None and float(target) == 1.0:
        h = model.features(x).sum(dim=(2, 3))
        loss = loss + F.cross_entropy(model.aux(h), y, reduction="sum")
    return loss


def brute_force(model: nn.Module, x, y, target, max_norm: float):
    """Loop over examples of D's loss: each gradient alone, clipped, summed."""
    return clip_one_by_one(model, lambda m, i: example_loss(m, x[i:i + 1], y[i:i + 1], target[i:i + 1]), len(x),
                           max_norm)


def clip_one_by_one(model: nn.Module, loss, n: int, max_norm: float):
    """Any model: each example's gradient of ``loss(model, i)`` alone (unused parameters: zero), its norm,
    clipped, summed."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    norms = []
    for i in range(n):
        grads = torch.autograd.grad(loss(model, i).sum(), list(model.parameters()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads)]
        norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
        for t, g in zip(total, grads):
            t += g * min(1.0, max_norm / (float(norms[-1]) + 1e-6))
    return total, torch.stack(norms)


def tiny_batch(size: int, channels: int, n: int = 10, scale: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=gen, dtype=torch.float64) * scale
    y = torch.randint(3, (n,), generator=gen)
    target = (torch.arange(n) % 2).double()
    return x, y, target


def median_clipped(size: int, channels: int, aux: bool, device: str = "cpu"):
    """A double-precision D, a batch of 10 and C at the median unclipped norm (half the examples get
    clipped, half pass unchanged); the clipper has captured the per-example losses."""
    torch.manual_seed(0)
    model = Discriminator(num_classes=3, channels=channels, image_size=size, ndf=8, aux_classifier=aux).double()
    model = model.to(device)
    x, y, target = (t.to(device) for t in tiny_batch(size, channels, scale=3.0))
    _, unclipped = brute_force(model, x, y, target, float("inf"))
    c = float(unclipped.median())
    clipper = PerExampleClipper(model, max_grad_norm=c)
    with clipper.capture():
        losses = per_example_d_loss(model, x, y, target.bool(), Objective())
    return model, (x, y, target), unclipped, c, clipper, losses


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,channels,aux", [(28, 1, False), (64, 3, False), (28, 1, True), (64, 3, True)])
def test_clipped_sum_matches_brute_force(size, channels, aux, device):
    """aux=True is the default D: AC-GAN head inside each example's clipped gradient."""
    model, (x, y, target), _, c, clipper, losses = median_clipped(size, channels, aux, device)
    got, norms = clipper.clipped_grad_sum(losses)
    want, want_norms = brute_force(model, x, y, target, c)
    assert torch.allclose(norms, want_norms, rtol=1e-9)
    assert (norms > c).any() and (norms < c).any()
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aux", [False, True])
def test_chunked_patches_and_segment_sums_match_brute_force(monkeypatch, aux, device):
    """Real batches are larger than the patch block (CHUNK, on a CPU); here blocks of 3 over 10
    examples, and hospitals' segments (4 and 6 examples) that cross the blocks' edges: each
    hospital's clipped sum is still its own examples' brute-force sum. (A GPU takes the batch whole.)"""
    monkeypatch.setattr(clipping, "CHUNK", 3)
    model, (x, y, target), unclipped, c, clipper, losses = median_clipped(28, 1, aux, device)
    sums, norms = clipper.clipped_grad_sum(losses, segments=[4, 6])
    assert torch.allclose(norms, unclipped, rtol=1e-9)
    for i, part in enumerate((slice(0, 4), slice(4, 10))):
        want, _ = brute_force(model, x[part], y[part], target[part], c)
        for g, w in zip(sums, want):
            assert torch.allclose(g[i], w, rtol=1e-9, atol=1e-12)


def test_ghost_and_direct_norm_paths_agree_on_linear_with_positions():
    """A Linear over a sequence axis uses the ghost norm or the per-example gradient by cost; both are exact."""
    class SeqModel(nn.Module):
        def __init__(self, k, o):
            super().__init__()
            self.lin = nn.Linear(k, o)

        def forward(self, x, y):
            return self.lin(x).pow(2).sum(dim=(1, 2))

    routes = [clipping._ghost_is_cheaper(t, k, o) for k, o, t in ((3, 2, 16), (40, 30, 2))]  # as the clipper decides
    assert routes == [False, True]  # so both paths are exercised
    for k, o, t in ((3, 2, 16), (40, 30, 2)):  # the first prefers per-example, the second the ghost norm
        model = SeqModel(k, o).double()
        x = torch.randn(6, t, k, dtype=torch.float64)
        y = torch.zeros(6, dtype=torch.long)
        clipper = PerExampleClipper(model, max_grad_norm=0.5)
        with clipper.capture():
            losses = model(x, y)
        got, norms = clipper.clipped_grad_sum(losses)
        want, want_norms = clip_one_by_one(model, lambda m, i: m(x[i:i + 1], y[:1]), len(x), 0.5)
        assert torch.allclose(norms, want_norms) and (norms > 0.5).any()  # clipping bites
        assert all(torch.allclose(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("kernel,stride,padding,size", [
    ((4, 4), (2, 2), (1, 1), (14, 14)),  # D's layers at 28 px
    ((4, 4), (2, 2), (1, 1), (7, 7)),  # an odd input: the last row and column of blocks half padding
    ((6, 3), (3, 1), (2, 0), (11, 9)),  # non-square kernel, stride and padding
    ((3, 3), (1, 1), (1, 1), (5, 6)),  # stride 1: blocks are pixels
    ((2, 2), (2, 2), (0, 0), (9, 9)),  # windows that do not reach the last row
])
def test_block_gram_equals_the_gram_of_the_patches(kernel, stride, padding, size):
    """The ghost norm's patch gram from pixel blocks equals a3^T a3 of the unfolded patches (F.unfold,
    a second implementation), for every example and pair of output positions."""
    conv = nn.Conv2d(3, 5, kernel, stride, padding).double()
    a = torch.randn(4, 3, *size, dtype=torch.float64)
    out_hw = conv(a).shape[2:]
    patches = F.unfold(a, kernel, padding=padding, stride=stride)  # (B, 3*kh*kw, T)
    assert clipping._blockwise(conv)
    assert torch.allclose(clipping._patch_gram(a, conv, out_hw), patches.transpose(1, 2) @ patches, rtol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,route", [(4, 2, 1, "blocks"), (3, 2, 1, "patches"),
                                                         (3, 1, 0, "per-example")])
def test_conv_norms_match_brute_force_on_every_route(kernel, stride, padding, route):
    """A convolution's norms take the ghost norm by pixel blocks (kernel a multiple of the stride), the
    ghost norm by unfolded patches (3 / 2) or the per-example gradient (cheaper for 49 positions and
    144 inputs): the norms and the clipped sum are exact on every route."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(16, 32, kernel, stride, padding), nn.Flatten(), nn.LazyLinear(1)).double()
    x = torch.randn(6, 16, 9, 9, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    conv = model[0]
    t = model[0](x).shape[2] * model[0](x).shape[3]
    ghost = clipping._ghost_is_cheaper(t, conv.weight[0].numel(), 32)
    assert route == ("per-example" if not ghost else "blocks" if clipping._blockwise(conv) else "patches")
    clipper = PerExampleClipper(model, max_grad_norm=0.5)
    with clipper.capture():
        losses = model(x).squeeze(1).pow(2)
    got, norms = clipper.clipped_grad_sum(losses)
    want, want_norms = clip_one_by_one(model, lambda m, i: m(x[i:i + 1]).pow(2), len(x), 0.5)
    assert torch.allclose(norms, want_norms, rtol=1e-10)
    assert (norms > 0.5).any()
    assert all(torch.allclose(g, w, rtol=1e-10) for g, w in zip(got, want))


@pytest.mark.parametrize("device", DEVICES)
def test_per_layer_clipping_clips_each_layer_to_its_share_of_c(device):
    """``per_layer``: every layer's part of each example's gradient clipped to C / sqrt(L) alone, per
    hospital segment (brute force: each example's gradient, split by the layer that owns each
    weight); so each example's whole clipped gradient has norm <= C, the bound the noise is for."""
    model, (x, y, target), unclipped, c, _, _ = median_clipped(28, 1, True, device)
    layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    bound = c / len(layers) ** 0.5
    clipper = PerExampleClipper(model, max_grad_norm=c, per_layer=True)
    with clipper.capture():
        losses = per_example_d_loss(model, x, y, target.bool(), Objective())
    sums, norms = clipper.clipped_grad_sum(losses, segments=[4, 6])
    assert torch.allclose(norms, unclipped, rtol=1e-9)  # the norms reported stay the whole gradient's
    owner = {p: i for i, m in enumerate(layers) for p in m.parameters(recurse=False)}
    params = list(model.parameters())
    want = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    clipped_parts = 0
    for i in range(len(x)):
        grads = torch.autograd.grad(example_loss(model, x[i:i + 1], y[i:i + 1], target[i:i + 1]), params,
                                    allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        part = [torch.sqrt(sum(g.pow(2).sum() for p, g in zip(params, grads) if owner[p] == k)) for k in range(len(layers))]
        clipped_parts += sum(float(n) > bound for n in part)
        one = [g * min(1.0, bound / (float(part[owner[p]]) + 1e-6)) for p, g in zip(params, grads)]
        assert float(torch.sqrt(sum(g.pow(2).sum() for g in one))) <= c * (1 + 1e-9)
        for t, g in zip(want[0 if i < 4 else 1], one):
            t += g
    assert 0 < clipped_parts < len(x) * len(layers)  # some parts clipped, some not: the test can fail
    for h in range(2):
        for got, w in zip(sums, want[h]):
            assert torch.allclose(got[h], w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("aux", [False, True])
def test_neighbouring_batches_differ_by_at_most_c_over_normaliser(aux):
    """Add or remove one real record: the upload before noise moves by <= C / normaliser (also
    for the default D, whose class head adds a loss term on real records only)."""
    torch.manual_seed(1)
    model = Discriminator(num_classes=3, channels=1, image_size=28, ndf=8, aux_classifier=aux).double()
    clipper = PerExampleClipper(model, max_grad_norm=C)
    x, y, _ = tiny_batch(28, 1, n=16, scale=50.0, seed=3)  # large inputs: every gradient norm >> C
    fake = (x[10:], y[10:])
    normaliser = 6.0 + 6.0  # expected real count + fakes, fixed in advance
    kw = dict(normaliser=normaliser, noise_multiplier=0.0, max_grad_norm=C)
    full, _ = discriminator_gradient(model, clipper, (x[:10], y[:10]), fake, **kw)
    worst, worst_drop = 0.0, 0
    for drop in range(10):
        keep = [i for i in range(10) if i != drop]
        fewer, _ = discriminator_gradient(model, clipper, (x[keep], y[keep]), fake, **kw)
        diff = torch.sqrt(sum((a - b).pow(2).sum() for a, b in zip(full, fewer)))
        if float(diff) > worst:
            worst, worst_drop = float(diff), drop
        # brute force agrees on the upload itself
        want, _ = brute_force(model, torch.cat([x[keep], fake[0]]), torch.cat([y[keep], fake[1]]),
                              torch.cat([torch.ones(9), torch.zeros(6)]).double(), C)
        assert all(torch.allclose(a, w / normaliser, atol=1e-12) for a, w in zip(fewer, want))
    assert worst <= C / normaliser * (1 + 1e-9)
    assert worst > 0.9 * C / normaliser  # the bound is tight for large gradients, so the test can fail

    # Without clipping the same neighbour moves the gradient far beyond C / normaliser.
    plain_full, _ = discriminator_gradient(model, None, (x[:10], y[:10]), fake, **kw)
    keep = [i for i in range(10) if i != worst_drop]
    plain_fewer, _ = discriminator_gradient(model, None, (x[keep], y[keep]), fake, **kw)
    assert float(torch.sqrt(sum((a - b).pow(2).sum() for a, b in zip(plain_full, plain_fewer)))) > C / normaliser


def test_discriminator_is_opacus_compatible_and_rejects_batchnorm():
    _, d = build_models(num_classes=4, channels=3, image_size=64)
    assert ModuleValidator.validate(d, strict=False) == []
    g = Generator(num_classes=2, channels=1, image_size=28)
    with pytest.raises(ValueError, match="BatchNorm"):
        PerExampleClipper(g, max_grad_norm=1.0)


def test_clipper_needs_capture():
    _, d = build_models(num_classes=2, channels=1, image_size=28)
    clipper = PerExampleClipper(d, max_grad_norm=1.0)
    losses = d(torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 0]))
    with pytest.raises(RuntimeError, match="capture"):
        clipper.clipped_grad_sum(losses)


@pytest.mark.parametrize("size,channels", [(28, 1), (28, 3), (64, 1), (64, 3)])
def test_model_shapes(size, channels):
    g, d = build_models(num_classes=4, channels=channels, image_size=size)
    x, y = g.sample(5)
    assert x.shape == (5, channels, size, size) and y.shape == (5,)
    assert d(x, y).shape == (5,)
    assert float(x.detach().abs().max()) <= 1.0


class MinibatchStddev(nn.Module):
    """ProGAN's minibatch-stddev: a parameter-free layer that mixes examples."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.std(dim=0, keepdim=True).mean().expand(x.shape[0], 1, *x.shape[2:])], dim=1)


class Scorer(nn.Module):
    def __init__(self, mixing: nn.Module | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = mixing or nn.Identity()
        self.head = nn.Linear((5 if isinstance(mixing, MinibatchStddev) else 4) * 28 * 28, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.conv(x)).flatten(1)).squeeze(1)


@pytest.mark.parametrize("mixing,match", [(nn.BatchNorm2d(4, affine=False), "mixes examples"),
                                          (nn.InstanceNorm2d(4, track_running_stats=True), "mixes examples"),
                                          (MinibatchStddev(), "depends on the other examples")])
def test_clipper_rejects_parameter_free_batch_mixing(mixing, match):
    probe = (torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=match):
        PerExampleClipper(Scorer(mixing), max_grad_norm=1.0, probe=probe)
    PerExampleClipper(Scorer(None), max_grad_norm=1.0, probe=probe)  # the same model without it is fine
    _, d = build_models(num_classes=2, channels=1, image_size=28)
    PerExampleClipper(d, max_grad_norm=1.0, probe=probe)  # and so is our D


class Twice(nn.Module):
    """One Linear applied twice in a forward pass (shared weights): its per-example gradient is
    the sum of two uses, which the clipper's one-capture-per-layer bookkeeping cannot hold."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(self.lin(x)).sum(dim=1)


class Grouped(nn.Module):
    def __init__(self, **conv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, **conv)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sum(dim=(1, 2, 3))


def test_clipper_refuses_what_it_cannot_clip_exactly():
    """Each refusal names the problem instead of returning a wrong clipped sum."""
    twice = Twice()
    clipper = PerExampleClipper(twice, max_grad_norm=1.0)
    with pytest.raises(RuntimeError, match="ran twice"):
        with clipper.capture():
            twice(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    for conv in (dict(groups=2), dict(padding=1, padding_mode="reflect")):
        with pytest.raises(ValueError, match="groups=1 and zero padding"):
            PerExampleClipper(Grouped(**conv), max_grad_norm=1.0)
    _, d = build_models(num_classes=2, channels=1, image_size=28)
    clipper = PerExampleClipper(d, max_grad_norm=1.0)
    with clipper.capture():
        losses = d(torch.randn(5, 1, 28, 28), torch.tensor([0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="do not add up"):
        clipper.clipped_grad_sum(losses, segments=[2, 2])


def test_clipping_runs_with_tf32_off_and_restores_it(monkeypatch, tf32_on):
    """Whoever calls the clipper (a notebook, not only a run that checked --device), the norms and
    the clipped sums are computed without TF32, and the caller's flags come back afterwards."""
    cudnn, cublas = tf32_on
    seen = []
    real = clipping._layer_norms
    monkeypatch.setattr(clipping, "_layer_norms", lambda *a: seen.append((cudnn.allow_tf32, cublas.allow_tf32))
                        or real(*a))
    _, _, _, _, clipper, losses = median_clipped(28, 1, True)
    clipper.clipped_grad_sum(losses)
    assert seen and all(flags == (False, False) for flags in seen)
    assert cudnn.allow_tf32 and cublas.allow_tf32
