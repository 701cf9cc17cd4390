"""Exploration (session 22): the library's DiffAugment with its cut-out shrunk to one pixel
(translation only, in effect), recipe d5-ms-m9-da, at epsilon 10. Record: scratch_diffaugment.jsonl.

Usage (from the repository root): python results/recipe_search/scratch_diffaugment_shift_only.py DATASET SEED
"""
import sys, json
sys.path.insert(0, "benchmarks")
import hfgan_core.diffaugment as da
da.CUTOUT = 0.0  # a 1-pixel square: translation only, in effect
import recipe_search as rs, torch
from pathlib import Path
torch.set_num_threads(1)
line = rs.run_recipe("d5-ms-m9-da", sys.argv[1], 10.0, int(sys.argv[2]), Path("results/runs/scratch-da-shift"))
line["recipe"] = "d5-ms-m9-da, translation only (scratch: CUTOUT = 0)"
v = line["val"]
print(sys.argv[1], "shift-only TSTR AUC %.3f macro-F1 %.3f CAS %.3f cov %s FID %.2f" % (v["tstr"]["auc"], v["tstr"]["macro_f1"], v["cas"], [round(c, 2) for c in v["coverage"]], v["fid"]), flush=True)
with open("results/recipe_search/scratch_diffaugment.jsonl", "a") as f:
    f.write(json.dumps(rs.jsonable(line)) + "\n")
