"""Exploration (session 23): variants of the library's DiffAugment on recipe d5-ms-m9-da at
epsilon 10, by patching ``diff_augment`` where client and engine call it (the clipping bound and
the accountant are untouched: each variant still transforms each example alone, from the
hospital's rng). Record: scratch_diffaugment.jsonl.

  cutout  the square cut-out only, no shift
  shift2  the full DiffAugment with shifts of at most 2 pixels (SHIFT = 1/14) instead of 4

Usage (from the repository root): python results/recipe_search/scratch_diffaugment_variants.py VARIANT DATASET SEED
"""
import sys, json
sys.path.insert(0, "benchmarks")
import torch
from pathlib import Path
import hfgan_core.client as cl
import hfgan_core.engine as en
import hfgan_core.diffaugment as da
import recipe_search as rs

torch.set_num_threads(1)
variant, dataset, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])


def cutout_only(x, rng=None):
    b, _, h, w = x.shape
    k = max(1, round(h * da.CUTOUT))
    top = torch.randint(0, h - k + 1, (b,), generator=rng, device=x.device)
    left = torch.randint(0, w - k + 1, (b,), generator=rng, device=x.device)
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    cut = (((r[None, :] >= top[:, None]) & (r[None, :] < (top + k)[:, None]))[:, :, None]
           & ((c[None, :] >= left[:, None]) & (c[None, :] < (left + k)[:, None]))[:, None, :])
    return x * (~cut)[:, None].to(x.dtype)


if variant == "cutout":
    cl.diff_augment = en.diff_augment = cutout_only
elif variant == "shift2":
    da.SHIFT = 1 / 14  # round(28 / 14) = 2 pixels; the library's 1/8 gives round(3.5) = 4
else:
    sys.exit(f"unknown variant {variant!r}")
line = rs.run_recipe("d5-ms-m9-da", dataset, 10.0, seed, Path(f"results/runs/scratch-da-{variant}"))
line["recipe"] = f"d5-ms-m9-da, variant {variant} (scratch)"
v = line["val"]
print(dataset, variant, "TSTR AUC %.3f macro-F1 %.3f CAS %.3f cov %s FID %.2f" % (
    v["tstr"]["auc"], v["tstr"]["macro_f1"], v["cas"], [round(c, 2) for c in v["coverage"]], v["fid"]), flush=True)
with open("results/recipe_search/scratch_diffaugment.jsonl", "a") as f:
    f.write(json.dumps(rs.jsonable(line)) + "\n")
