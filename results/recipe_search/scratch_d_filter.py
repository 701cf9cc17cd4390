"""Exploration (session 24): filter each generator's fakes with the final, DP-trained discriminator.

D is a function of the hospitals' noisy uploads only, so using it to choose among a generator's
fakes is post-processing: the released images keep the generators' epsilon. Each requested image
(z, y) becomes the best of K candidates of the same label (its own z plus K - 1 more, drawn from a
stream seeded by the image's z, so a draw is reproducible), scored by D:

  aux   log p_D(y | x), D's AC-GAN class head: keeps fakes D reads as their label
  rf    D's real/fake logit D(x, y) (projection term included): discriminator rejection, roughly
  both  aux + rf

The same run's generators are judged without and with the filter (``quality.generator_quality``,
validation only), so the difference is paired. Record: scratch_d_filter.jsonl.

Usage (from the repository root): python results/recipe_search/scratch_d_filter.py RUN_DIR [K ...]
"""
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hfgan_core.data import load_dataset
from hfgan_core.extractor import load_or_train_extractor
from hfgan_core.quality import generator_quality
from hfgan_core.train import TrainConfig, build_discriminator, load_generators
from dataclasses import replace

torch.set_num_threads(1)
run_dir = Path(sys.argv[1])
ks = [int(k) for k in sys.argv[2:]] or [4]
cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())["config"])
ds = load_dataset(cfg.dataset)
dev = replace(ds, test=None)
d = build_discriminator(cfg, num_classes=ds.num_classes, channels=ds.channels, image_size=ds.image_size)
d.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=False)["discriminator"])
d.eval()
gens = load_generators(run_dir / "generators.pt")
extractor, _ = load_or_train_extractor(dev, epochs=5)


class Filtered(torch.nn.Module):
    """G's interface (nz, num_classes, forward(z, y)), returning the best of k candidates per image."""

    def __init__(self, g, k: int, score: str) -> None:
        super().__init__()
        self.g, self.k, self.score = g, k, score
        self.nz, self.num_classes = g.nz, g.num_classes

    @torch.no_grad()
    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(z)
        seed = int((z[:, 0].abs().sum() * 1e6).item()) % (2 ** 31)
        extra = torch.randn(self.k - 1, n, self.nz, generator=torch.Generator().manual_seed(seed))
        zs = torch.cat([z[None], extra])  # (k, n, nz)
        x = self.g(zs.flatten(0, 1), y.repeat(self.k))  # (k n, C, S, S)
        rf, aux = d.forward_with_aux(x, y.repeat(self.k))
        s = {"aux": F.log_softmax(aux, 1).gather(1, y.repeat(self.k)[:, None])[:, 0], "rf": rf}
        s["both"] = s["aux"] + s["rf"]
        best = s[self.score].view(self.k, n).argmax(0)  # (n,)
        return x.view(self.k, n, *x.shape[1:])[best, torch.arange(n)]


def judge(samplers, label: str) -> dict:
    t = time.time()
    v = generator_quality(samplers, dev, extractor)
    line = {"run": str(run_dir), "dataset": cfg.dataset, "epsilon": cfg.epsilon, "seed": cfg.seed, "filter": label,
            "val": v, "judge_s": time.time() - t}
    print(f"{run_dir.name} {label}: TSTR AUC {v['tstr']['auc']:.3f} macro-F1 {v['tstr']['macro_f1']:.3f} "
          f"CAS {v['cas']:.3f} FID {v['fid']:.2f} coverage {[round(c, 2) for c in v['coverage']]}", flush=True)
    with open("results/recipe_search/scratch_d_filter.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return v


judge(gens, "none")
for k in ks:
    for score in ("aux", "rf", "both"):
        judge([Filtered(g, k, score) for g in gens], f"{score}-k{k}")
