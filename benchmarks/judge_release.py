"""Judge the released synthetic datasets' generators on validation, as `make quality` judges its runs.

`make release` trains each dataset's recipe at epsilon = 10, seed 0, with noise from OS entropy, so
its generators are not the ones `results/gan_quality.md` judged (those runs are simulations whose
noise derives from the seed). This script scores the released ones with the same functions and
settings (``quality.generator_quality``, the committed in-domain extractor), on the validation
split only, and writes ``results/<dataset>/release_quality.json``.

    python benchmarks/judge_release.py [--datasets pneumoniamnist brainmri retinamnist]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from hfgan_core.benchmark import jsonable, provenance
from hfgan_core.data import load_dataset
from hfgan_core.extractor import load_or_train_extractor
from hfgan_core.gan_quality import TARGETS, QualityRunConfig
from hfgan_core.train import load_generators

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "brainmri", "retinamnist"])
    p.add_argument("--runs", default=str(ROOT / "results" / "runs"), help="where make release left release-<dataset>/")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    from hfgan_core.quality import generator_quality
    defaults = QualityRunConfig()
    for name in args.datasets:
        run = Path(args.runs) / f"release-{name}"
        sidecar = json.loads((ROOT / "results" / name / "synthetic_eps10_seed0.json").read_text())
        ds = load_dataset(name, args.data_dir)
        ds = replace(ds, test=None)  # validation and training only
        extractor, info = load_or_train_extractor(ds, epochs=defaults.extractor_epochs)
        started = time.time()
        q = generator_quality(load_generators(run / "generators.pt"), ds, extractor, config=defaults.quality)
        key = TARGETS[name][0]
        report = {"dataset": name, "generators": str(run / "generators.pt"), "epsilon": sidecar["epsilon"],
                  "noise_source": sidecar["noise_source"], "extractor": info, "eval_s": time.time() - started,
                  "train_s": json.loads((run / "timing.json").read_text())["train_s"], "provenance": provenance("cpu"),
                  **q}
        (ROOT / "results" / name / "release_quality.json").write_text(json.dumps(jsonable(report), indent=2))
        print(f"[{name}] released generators (epsilon {sidecar['epsilon']:.3f}): TSTR {key} {q['tstr'][key]:.3f}, "
              f"CAS {q['cas']:.3f}, coverage {[round(c, 2) for c in q['coverage']]}, "
              f"copies {q['nn_below_val_p05']:.3f} ({report['eval_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
