"""Exploration (session 22): two discriminator changes tried on brain MRI at epsilon 10, seed 0, without
adding options to the library: D's LeakyReLUs patched to tanh (Papernot et al. 2021's tempered sigmoids
help DP-SGD classifiers) or a parameter-free GroupNorm(8) after D's 2nd and 3rd convolutions. The recipe
is otherwise d5-ms-m9; scored on validation by recipe_search.run_recipe. Neither helped (README,
"Choosing the recipe"); records in scratch_d_variants.jsonl.

Usage (from the repository root): python results/recipe_search/scratch_d_variants.py tanh|gn
"""
import sys, json, torch, torch.nn as nn
sys.path.insert(0, "benchmarks")
import recipe_search as rs
from hfgan_core import models
variant = sys.argv[1]
Orig = models.Discriminator.__init__
def init(self, **kw):
    Orig(self, **kw)
    feats = []
    for m in self.features:
        if isinstance(m, nn.LeakyReLU):
            if variant == "tanh":
                feats.append(nn.Tanh())
                continue
            if variant == "gn" and isinstance(feats[-1], nn.Conv2d) and feats[-1].in_channels > 1:
                feats.append(nn.GroupNorm(8, feats[-1].out_channels, affine=False))
        feats.append(m)
    self.features = nn.Sequential(*feats)
models.Discriminator.__init__ = init
torch.set_num_threads(1)
rs.RECIPES["x"] = rs.RECIPES["d5-ms-m9"]
from pathlib import Path
line = rs.run_recipe("x", "brainmri", 10.0, 0, Path(f"results/runs/scratch-d-{variant}"))
line["recipe"] = f"d5-ms-m9 + D {variant} (scratch)"
v = line["val"]
print(variant, "TSTR AUC %.3f macro-F1 %.3f CAS %.3f cov %s %.0f s" % (v["tstr"]["auc"], v["tstr"]["macro_f1"], v["cas"], [round(c,2) for c in v["coverage"]], line["train_s"]), flush=True)
with open("results/recipe_search/scratch_d_variants.jsonl", "a") as f:
    f.write(json.dumps(rs.jsonable(line)) + "\n")
