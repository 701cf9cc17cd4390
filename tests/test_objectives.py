"""The GAN losses and the generator's EMA against their formulas written out per example with
plain Python loops (the engines are compared with each other elsewhere; both call these)."""
from __future__ import annotations

import math

import pytest
import torch

from hfgan_core.client import Objective, generator_losses, per_example_d_loss, update_ema
from hfgan_core.models import Discriminator, Generator


def _d(aux: bool) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(num_classes=3, channels=1, image_size=28, ndf=8, aux_classifier=aux).double()


def _logit_and_class(d: Discriminator, x: torch.Tensor, y: torch.Tensor, i: int) -> tuple[float, list[float]]:
    with torch.no_grad():
        logit, cls = d.forward_with_aux(x[i:i + 1], y[i:i + 1])
    return float(logit), ([] if cls is None else cls[0].tolist())


def _ce(class_logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in class_logits)) - class_logits[label]


@pytest.mark.parametrize("loss,aux", [("ns", True), ("hinge", True), ("hinge", False)])
def test_d_loss_per_example_is_its_formula(loss, aux):
    """ns: -log sigmoid(l) on real, -log(1 - sigmoid(l)) on fake; hinge: max(0, 1 - l) on real,
    max(0, 1 + l) on fake; the class term 0.5 * CE on real examples only."""
    d = _d(aux)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (8,), generator=gen)
    got = per_example_d_loss(d, x, y, 5, Objective(loss=loss, aux_weight=0.5))
    for i in range(8):
        logit, cls = _logit_and_class(d, x, y, i)
        real = i < 5
        if loss == "hinge":
            want = max(0.0, 1 - logit) if real else max(0.0, 1 + logit)
        else:
            want = -math.log(1 / (1 + math.exp(-logit))) if real else -math.log(1 - 1 / (1 + math.exp(-logit)))
        if aux and real:
            want += 0.5 * _ce(cls, int(y[i]))
        assert got[i].item() == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("loss", ["ns", "hinge"])
def test_g_loss_per_hospital_is_its_formula(loss):
    """Per hospital: the adversarial term (ns: mean -log sigmoid(l); hinge: -mean l), plus 0.7 x
    mean CE of the label it was drawn for, plus 0.3 / (mean_j |x_j - x_j'| / |z_j - z_j'| + 1e-5)
    over the pairs (j, j + B/2) (mode seeking), plus 0.2 x the mean total variation of its images."""
    d = _d(True)
    gen = torch.Generator().manual_seed(2)
    h, b, nz = 2, 6, 4
    x = torch.randn(h, b, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (h, b), generator=gen)
    z = torch.randn(h, b, nz, generator=gen, dtype=torch.float64)
    got = generator_losses(d, x, y, z, Objective(loss=loss, g_aux_weight=0.7, mode_seeking=0.3, smoothness=0.2))
    for k in range(h):
        adv, ce = [], []
        for j in range(b):
            logit, cls = _logit_and_class(d, x[k], y[k], j)
            adv.append(-logit if loss == "hinge" else math.log(1 + math.exp(-logit)))
            ce.append(_ce(cls, int(y[k, j])))
        ratios = [float((x[k, j] - x[k, j + b // 2]).abs().mean() / (z[k, j] - z[k, j + b // 2]).abs().mean())
                  for j in range(b // 2)]
        tv = []  # per image: mean |vertical neighbour difference| + mean |horizontal neighbour difference|
        for j in range(b):
            img = x[k, j, 0].tolist()
            down = [abs(img[r + 1][c] - img[r][c]) for r in range(27) for c in range(28)]
            right = [abs(img[r][c + 1] - img[r][c]) for r in range(28) for c in range(27)]
            tv.append(sum(down) / len(down) + sum(right) / len(right))
        want = sum(adv) / b + 0.7 * sum(ce) / b + 0.3 / (sum(ratios) / len(ratios) + 1e-5) + 0.2 * sum(tv) / b
        assert got[k].item() == pytest.approx(want, rel=1e-9)


def test_ema_after_t_steps_is_the_geometric_average():
    """After steps with weights w_1..w_t, ema = d^t w_0 + (1 - d) sum_s d^(t - s) w_s; BatchNorm
    statistics are the model's own (copied, not averaged)."""
    torch.manual_seed(3)
    model = Generator(num_classes=2, channels=1, image_size=28, nz=8, ngf=4).double()
    ema = Generator(num_classes=2, channels=1, image_size=28, nz=8, ngf=4).double()
    ema.load_state_dict(model.state_dict())
    decay, history = 0.9, [[p.detach().clone() for p in model.parameters()]]
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            for buf in model.buffers():
                if buf.is_floating_point():
                    buf.add_(1.0)
        history.append([p.detach().clone() for p in model.parameters()])
        update_ema(ema, model, decay)
    t = len(history) - 1
    for i, e in enumerate(ema.parameters()):
        want = decay ** t * history[0][i] + sum((1 - decay) * decay ** (t - s) * history[s][i] for s in range(1, t + 1))
        assert torch.allclose(e, want, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(e, m) for e, m in zip(ema.buffers(), model.buffers()))
