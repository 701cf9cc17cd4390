"""Per-example gradient clipping at the cost of about one backward pass.

DP-SGD needs  sum_i clip_C(grad l_i)  with  clip_C(g) = g * min(1, C / ||g||).
Opacus materialises every per-example gradient (0.2x the speed of a plain step here).
We follow the "book-keeping" idea (Bu et al., 2023): a layer's per-example weight
gradient is a product of its input activations a_i and output gradients g_i, so

1. one forward pass stores a_i for every Linear / Conv2d / Embedding layer;
2. one backward pass to the layer *outputs* gives g_i (no weight gradients yet);
3. each layer's per-example squared norm comes from (a_i, g_i) alone, either by the
   "ghost norm" <a a^T, g g^T> or by forming the per-example gradient, whichever
   costs fewer flops for that layer (for a strided convolution, the ghost norm's patch
   gram comes from a gram of s x s pixel blocks, without forming the patches);
4. with the clip factors c_i known, the clipped sum per layer is one matmul
   sum_i c_i g_i^T a_i.

``per_layer`` clips each of the L layers' part of an example's gradient to C / sqrt(L) instead
(group-wise clipping, McMahan et al. 2018): the whole still has norm <= C, so the sensitivity and
the noise are unchanged, but a layer whose gradients are small next to the others' (D's heads)
keeps its share of the signal instead of being scaled away with them.

The model must be a composition of those layers and parameter-free modules, with
no layer mixing examples (no BatchNorm) and no in-place op on a layer's output.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .device import exact_float32

SUPPORTED = (nn.Linear, nn.Conv2d, nn.Embedding)
# Layers that mix examples even without trainable parameters: each example's output (and so its
# "per-example" gradient) depends on the other examples, which per-example clipping cannot bound.
MIXING = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


class PerExampleClipper:
    """Computes the sum of per-example clipped gradients of ``model``'s parameters."""

    def __init__(self, model: nn.Module, *, max_grad_norm: float,
                 probe: tuple[torch.Tensor, ...] | None = None, per_layer: bool = False) -> None:
        """``probe``: a few example inputs (a batch of 3 or more) to check that no layer mixes
        examples, including parameter-free ones no type check can know (minibatch-stddev).
        ``per_layer``: each layer's part clipped to C / sqrt(layers) (module docstring)."""
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
        self.model, self.max_grad_norm, self.per_layer = model, max_grad_norm, per_layer
        self.layers = self._prepare_layers(model)
        if probe is not None:
            self._check_examples_independent(model, probe)
        self._records: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._capturing = False
        for layer in self.layers:
            layer.register_forward_hook(self._store)

    @staticmethod
    def _prepare_layers(model: nn.Module) -> list[nn.Module]:
        layers = []
        for name, m in model.named_modules():
            if isinstance(m, MIXING) or (isinstance(m, nn.modules.instancenorm._InstanceNorm)
                                         and m.track_running_stats):
                raise ValueError(f"layer '{name}' ({type(m).__name__}) mixes examples (batch statistics), with or "
                                 "without parameters, so one record would move every example's gradient and "
                                 "per-example clipping would not bound it; use GroupNorm-free layers or none")
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if type(m) not in SUPPORTED:
                raise ValueError(f"layer '{name}' ({type(m).__name__}) has trainable parameters but per-example "
                                 f"clipping supports only {', '.join(t.__name__ for t in SUPPORTED)}; "
                                 "batch-mixing layers such as BatchNorm break per-example privacy")
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
                raise ValueError(f"layer '{name}': only Conv2d with groups=1 and zero padding is supported")
            layers.append(m)
        return layers

    @staticmethod
    def _check_examples_independent(model: nn.Module, probe: tuple[torch.Tensor, ...]) -> None:
        """Each example's output must be what the model gives it alone (train mode, no grad)."""
        with torch.no_grad():
            together = model(*probe)
            alone = torch.cat([model(*(t[i:i + 1] for t in probe)) for i in range(len(probe[0]))])
        if not torch.allclose(together, alone, rtol=1e-4, atol=1e-5):
            raise ValueError("the model's output for one example depends on the other examples in the batch "
                             f"(max difference {float((together - alone).abs().max()):.3g}): some layer mixes examples "
                             "(batch statistics, minibatch-stddev), which per-example clipping cannot bound")

    def _store(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self._capturing:
            return
        if module in self._records:
            raise RuntimeError("a layer ran twice in one forward pass; shared weights are not supported")
        self._records[module] = (inputs[0].detach(), output)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record activations of the forward pass run inside this block."""
        self._records.clear()
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False

    def clipped_grad_sum(self, losses: torch.Tensor, segments: list[int] | None = None
                         ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Sum over examples of clipped gradients, in ``model.parameters()`` order, and the
        unclipped per-example gradient norms. ``losses`` is (B,), one loss per example.

        With ``segments`` (sizes of consecutive runs of examples, summing to B), one sum per
        segment: each parameter's result gets a leading (len(segments),) axis. The batched
        engine puts each hospital's examples in one segment, so one backward pass serves all.

        TF32 is off meanwhile (``device.exact_float32``): the norms (matmuls) and the clipped sums
        (convolution kernels) must round alike, or a clipped gradient could exceed C on a GPU."""
        with exact_float32():
            return self._clipped_grad_sum(losses, segments)

    def _clipped_grad_sum(self, losses: torch.Tensor, segments: list[int] | None
                          ) -> tuple[list[torch.Tensor], torch.Tensor]:
        missing = [m for m in self.layers if m not in self._records]
        if missing:
            raise RuntimeError("run the forward pass inside `with clipper.capture():` before clipping")
        outputs = [self._records[m][1] for m in self.layers]
        out_grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)  # (2) g_i per layer
        batch = losses.shape[0]
        sq_norms = losses.new_zeros(batch)
        prepared = []
        for m, g in zip(self.layers, out_grads):
            if g is None:  # layer unused by this loss: zero gradient
                g = torch.zeros_like(self._records[m][1])
            a = self._records[m][0]
            kind, sq, per_example, bias_g = _layer_norms(m, a, g)  # (3)
            sq_norms += sq
            prepared.append((m, kind, a, g, per_example, bias_g, sq))
        self._records.clear()
        norms = sq_norms.sqrt()
        if self.per_layer:  # (L, B): each layer's part to C / sqrt(L)
            bound = self.max_grad_norm / len(self.layers) ** 0.5
            factors = (bound / (torch.stack([sq for *_, sq in prepared]).sqrt() + 1e-6)).clamp(max=1.0)
        else:  # (L, B), one row repeated: the whole gradient to C
            factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0).expand(len(prepared), -1)

        sizes = segments or [batch]
        if sum(sizes) != batch:
            raise ValueError(f"segments {segments} do not add up to the batch of {batch} examples")
        bounds = [0] + torch.tensor(sizes).cumsum(0).tolist()
        spans = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        # coefs[l, h, i] = layer l's factor for example i if i is in segment h, else 0: a segment sum is one matmul
        owner = torch.repeat_interleave(torch.arange(len(sizes), device=norms.device),
                                        torch.tensor(sizes, device=norms.device))
        coefs = F.one_hot(owner, len(sizes)).T.to(norms.dtype) * factors[:, None, :]  # (L, H, B)
        grads: dict[torch.nn.Parameter, torch.Tensor] = {}
        for (m, kind, a, g, per_example, bias_g, _), f, coef in zip(prepared, factors, coefs):  # (4), per segment
            if per_example is not None:
                w = coef @ per_example.flatten(1)  # (H, out * k)
            else:
                w = torch.stack([_clipped_weight_sum(m, kind, a[s], g[s], f[s]) for s in spans])
            grads[m.weight] = w.view(len(spans), *m.weight.shape)
            if bias_g is not None:
                grads[m.bias] = coef @ bias_g  # (H, out)
        sums = [grads.get(p, p.new_zeros(len(spans), *p.shape)) for p in self.model.parameters()]
        return (sums if segments is not None else [t[0] for t in sums]), norms


CHUNK = 128  # examples per block on a CPU, so large batches stay in cache (~2x); a GPU takes the batch whole


def _layer_norms(m: nn.Module, a: torch.Tensor, g: torch.Tensor
                 ) -> tuple[str, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One layer's per-example squared gradient norms (weight and bias), its per-example weight
    gradients when those were the cheaper route, and its per-example bias gradients (B, out)."""
    parts = []
    kind = "conv" if isinstance(m, nn.Conv2d) else None
    chunk = CHUNK if a.device.type == "cpu" else len(a)
    for lo in range(0, len(a), chunk):
        a_c, g_c = a[lo:lo + chunk], g[lo:lo + chunk]
        if kind == "conv" and _blockwise(m) and _ghost_is_cheaper(g_c[0, 0].numel(), m.weight[0].numel(), g_c.shape[1]):
            g3 = g_c.flatten(2)  # (b, out, T); the patches are never formed
            sq, per_example = (_patch_gram(a_c, m, g_c.shape[2:]) * (g3.transpose(1, 2) @ g3)).sum(dim=(1, 2)), None
        else:
            kind, a3, g3 = _as_matrices(m, a_c, g_c)
            sq, per_example = _weight_sq_norms(kind, a3, g3)
        bias_g = g3.sum(dim=2) if getattr(m, "bias", None) is not None else None  # (b, out)
        if bias_g is not None:
            sq = sq + bias_g.pow(2).sum(dim=1)
        parts.append((sq, per_example, bias_g))
    sq, per_example, bias_g = (None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in range(3))
    return kind, sq, per_example, bias_g


def _as_matrices(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Rewrite a layer as  out_i[:, t] = W a_i[:, t]  over T positions: a3 (B, k, T), g3 (B, out, T).

    The layouts are the ones unfold and flatten produce, so nothing is copied; for a
    convolution, g3 is a view of the (B, out, H', W') output gradient.
    """
    b = a.shape[0]
    if isinstance(m, nn.Embedding):
        if a.dim() != 1:
            raise ValueError("Embedding inputs must be one index per example, shape (B,)")
        return "embedding", a, g.unsqueeze(2)  # a: (B,) indices, g3: (B, d, 1)
    if isinstance(m, nn.Conv2d):
        return "conv", _unfold(a, m, g.shape[2:]), g.flatten(2)
    return "linear", a.reshape(b, -1, a.shape[-1]).transpose(1, 2), g.reshape(b, -1, g.shape[-1]).transpose(1, 2)


def _unfold(a: torch.Tensor, m: nn.Conv2d, out_hw: torch.Size) -> torch.Tensor:
    """Patches (B, C*kh*kw, T) as a strided view of the padded input (3x faster than F.unfold on CPU)."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    a = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    b, c = a.shape[:2]
    s = a.stride()
    patches = a.as_strided((b, c, kh, kw, *out_hw), (s[0], s[1], dh * s[2], dw * s[3], sh * s[2], sw * s[3]))
    return patches.reshape(b, c * kh * kw, -1)


def _ghost_is_cheaper(t: int, k: int, out: int) -> bool:
    """Flops of the two T x T grams against those of the (out, k) per-example gradient."""
    return t * t * (k + out) < t * k * out


def _blockwise(m: nn.Conv2d) -> bool:
    """Whether ``_patch_gram`` applies: each kernel side a multiple of its stride, no dilation."""
    return m.dilation == (1, 1) and all(k % s == 0 for k, s in zip(m.kernel_size, m.stride))


def _patch_gram(a: torch.Tensor, m: nn.Conv2d, out_hw: torch.Size) -> torch.Tensor:
    """<patch_t, patch_t'> for every example and pair of output positions, (B, T, T), without the
    (B, C*kh*kw, T) patches, whose strided copy costs more than the gram on a CPU (5x for D's
    second layer at 28 px).

    Cut the padded input into s x s blocks (s: the stride). Output position (y, x) reads the
    kh/s x kw/s blocks from (y, x) on, so the patch gram is a sum over those block offsets (i, j) of
    the block gram <block(y+i, x+j), block(y'+i, x'+j)>, and the block gram is one matmul."""
    (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
    oh, ow = out_hw
    b, c, h, w = a.shape
    bh, bw = -(-(h + 2 * ph) // sh), -(-(w + 2 * pw) // sw)  # blocks down and across (zero-padded)
    a = F.pad(a, (pw, bw * sw - w - pw, ph, bh * sh - h - ph))
    # (B, C, bh, sh, bw, sw) -> (B, sh*sw*C, bh*bw): one column per block
    blocks = a.view(b, c, bh, sh, bw, sw).permute(0, 3, 5, 1, 2, 4).reshape(b, sh * sw * c, bh * bw)
    block_gram = (blocks.transpose(1, 2) @ blocks).view(b, bh, bw, bh, bw)
    gram = sum(block_gram[:, i:i + oh, j:j + ow, i:i + oh, j:j + ow]
               for i in range(kh // sh) for j in range(kw // sw))
    return gram.reshape(b, oh * ow, oh * ow)


def _weight_sq_norms(kind: str, a3: torch.Tensor, g3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-example ||dL_i/dW||^2, and the per-example gradients when they were cheaper to form."""
    if kind == "embedding":
        return g3.pow(2).sum(dim=(1, 2)), None
    _, k, t = a3.shape
    out = g3.shape[1]
    if t == 1:  # ||g a^T||_F^2 = ||g||^2 ||a||^2
        return g3.pow(2).sum(dim=(1, 2)) * a3.pow(2).sum(dim=(1, 2)), None
    if _ghost_is_cheaper(t, k, out):  # ghost norm <a^T a, g^T g>: never forms the (out, k) gradient
        gram_a = a3.transpose(1, 2) @ a3  # (B, T, T)
        gram_g = g3.transpose(1, 2) @ g3
        return (gram_a * gram_g).sum(dim=(1, 2)), None
    per_example = g3 @ a3.transpose(1, 2)  # (B, out, k)
    return per_example.pow(2).sum(dim=(1, 2)), per_example


def _clipped_weight_sum(m: nn.Module, kind: str, a: torch.Tensor, g: torch.Tensor,
                        factors: torch.Tensor) -> torch.Tensor:
    """sum_i c_i dL_i/dW without forming per-example gradients."""
    if kind == "embedding":
        return torch.zeros_like(m.weight).index_add_(0, a, g * factors[:, None])
    scaled = g * factors.view(-1, *([1] * (g.dim() - 1)))
    if kind == "conv":  # the convolution's own weight-gradient kernel, on output gradients scaled by c_i
        return torch.nn.grad.conv2d_weight(a, m.weight.shape, scaled, m.stride, m.padding, m.dilation, m.groups)
    return scaled.reshape(-1, scaled.shape[-1]).T @ a.reshape(-1, a.shape[-1])  # Linear: (out, in)
