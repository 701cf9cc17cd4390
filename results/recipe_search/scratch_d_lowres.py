"""Exploration (session 28): D at half resolution, the last untried lever in the README's list.

D sees every image, real and fake, average-pooled 2 x 2 (28 -> 14 px) and has one stride-2
convolution fewer (14 -> 7 -> 3): 34 k weights instead of 166 k, so the noise of a DP step has
about 2.2x less norm for the same clipped signal. The pooling is parameter-free and per example,
so clipping and epsilon are unchanged (the clipper's probe checks that examples stay independent).
The recipe is otherwise d5-ms-m9; scored on validation by recipe_search.run_recipe, seed 0.
Records in scratch_d_lowres.jsonl.

Usage (from the repository root): python results/recipe_search/scratch_d_lowres.py DATASET [SEED]
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, "benchmarks")
import recipe_search as rs  # noqa: E402
from hfgan_core import models  # noqa: E402

dataset, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
original = models.Discriminator.__init__


def half_resolution(self, *, image_size: int, **kw) -> None:
    original(self, image_size=image_size // 2, **kw)
    self.features = nn.Sequential(nn.AvgPool2d(2), *self.features)  # (B, C, 28, 28) -> (B, C, 14, 14) -> ...


models.Discriminator.__init__ = half_resolution
torch.set_num_threads(1)
rs.RECIPES["x"] = rs.RECIPES["d5-ms-m9"]
line = rs.run_recipe("x", dataset, 10.0, seed, Path(f"results/runs/scratch-d-lowres-{dataset}-seed{seed}"))
line["recipe"] = "d5-ms-m9 + D at 14 px (scratch)"
v = line["val"]
print(f"lowres {dataset} seed {seed}: TSTR AUC {v['tstr']['auc']:.3f} macro-F1 {v['tstr']['macro_f1']:.3f} "
      f"CAS {v['cas']:.3f} coverage {[round(c, 2) for c in v['coverage']]} {line['train_s']:.0f} s", flush=True)
with open("results/recipe_search/scratch_d_lowres.jsonl", "a") as f:
    f.write(json.dumps(rs.jsonable(line)) + "\n")
