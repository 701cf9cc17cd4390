"""The benchmark: every method on identical hospitals, seeds and classifier; one table per dataset.

    python -m hfgan_core benchmark --dataset pneumoniamnist --methods all --seeds 0 1 2 \\
        --profile quick --epsilon 10 --alpha 0.5 --out results/pneumoniamnist

* ``config``: the methods, the profiles (smoke / quick / paper) and one run's settings;
* ``tuning``: one hyper-parameter protocol for every method, on validation, same budget;
* ``runner``: the hospitals, every method on them, the sealed test split;
* ``tables``: table.csv / table.md from runs.json, paired differences, footnotes;
* ``units``: every finished result kept, so a stopped run resumes (``--resume``) with the same code;
* ``jobs``: the rows as jobs in worker processes, side by side (``--workers``), in the order tuning needs;
* ``provenance``: commit, hardware and versions recorded with every result.
"""
from .config import (CURVE_METHODS, GAN_LABELS, METHODS, PRIVATE_ROWS, PROFILES, BenchmarkConfig, Method,
                     Profile, run_profile)
from .provenance import jsonable, provenance
from .runner import SealedTest, class_mix_release, run_benchmark
from .tables import add_paired_deltas, load_runs, summarise, table_csv, table_markdown, wall_time_s, write_tables

__all__ = ["CURVE_METHODS", "GAN_LABELS", "METHODS", "PRIVATE_ROWS", "PROFILES", "BenchmarkConfig", "Method", "Profile",
           "SealedTest", "add_paired_deltas", "class_mix_release", "jsonable", "load_runs", "provenance",
           "run_benchmark", "run_profile", "summarise", "table_csv", "table_markdown", "wall_time_s", "write_tables"]
