"""Exploration (session 22), before DiffAugment was in the library: D's forward pass patched to shift
and cut out its inputs (real and fake alike, in D's and G's steps; torch's global rng), on brain
MRI at epsilon 10, seed 0, recipe d5-ms-m9. It gave TSTR macro-F1 0.652 against the recipe's 0.595,
which led to ``hfgan_core/diffaugment.py`` (the same transform, drawn from each hospital's rng) and
the recipe_search entry ``d5-ms-m9-da``. Record: scratch_diffaugment.jsonl.

Usage (from the repository root): python results/recipe_search/scratch_diffaugment_global_rng.py brainmri
"""
import sys, json, torch, torch.nn.functional as F
sys.path.insert(0, "benchmarks")
import recipe_search as rs
from hfgan_core import models
ON = {"on": False}


def diff_augment(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    s = max(1, round(h / 8))  # translation by up to 1/8 of the image, zero fill
    pad = F.pad(x, (s, s, s, s))
    dx, dy = torch.randint(0, 2 * s + 1, (b,)), torch.randint(0, 2 * s + 1, (b,))
    rows = (torch.arange(h)[None, :] + dy[:, None])  # (b, h)
    cols = (torch.arange(w)[None, :] + dx[:, None])
    x = pad[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
            rows[:, None, :, None], cols[:, None, None, :]]
    k = h // 4  # cutout: one k x k square per image set to 0 (mid-grey in [-1, 1])
    cy, cx = torch.randint(0, h - k + 1, (b,)), torch.randint(0, w - k + 1, (b,))
    yy, xx = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    mask = ((yy >= cy[:, None, None]) & (yy < cy[:, None, None] + k) & (xx >= cx[:, None, None]) & (xx < cx[:, None, None] + k))
    return x.masked_fill(mask[:, None], 0.0)


orig = models.Discriminator.forward_with_aux
def fwd(self, x, y):
    return orig(self, diff_augment(x) if ON["on"] else x, y)
models.Discriminator.forward_with_aux = fwd
from hfgan_core import train as tr
orig_round = tr.train_round if hasattr(tr, "train_round") else None
from hfgan_core import engine
orig_eng = engine.train_round
def eng_round(run):
    ON["on"] = True
    try:
        return orig_eng(run)
    finally:
        ON["on"] = False
engine.train_round = eng_round
torch.set_num_threads(1)
rs.RECIPES["x"] = rs.RECIPES["d5-ms-m9"]
from pathlib import Path
line = rs.run_recipe("x", sys.argv[1] if len(sys.argv) > 1 else "brainmri", 10.0, 0, Path("results/runs/scratch-diffaug"))
line["recipe"] = "d5-ms-m9 + DiffAugment translation+cutout (scratch)"
v = line["val"]
print("diffaug TSTR AUC %.3f macro-F1 %.3f CAS %.3f cov %s %.0f s" % (v["tstr"]["auc"], v["tstr"]["macro_f1"], v["cas"], [round(c,2) for c in v["coverage"]], line["train_s"]), flush=True)
with open("results/recipe_search/scratch_diffaugment.jsonl", "a") as f:
    f.write(json.dumps(rs.jsonable(line)) + "\n")
