"""Side check (not a result): would brain MRI FedAvg's tuning move past the corner of its grid?
Run with the pinned code (889f63f): cd /tmp/hfgan-paper-889f63f && PYTHONPATH=$PWD OMP_NUM_THREADS=1
<repo>/.venv/bin/python <repo>/results/paper_runs/tuning_edge_check.py /tmp/widen/out
FedAvg only, seed 0, paper profile; the grid replaced by lr {1e-2, 3e-2} x local epochs {2, 4}; the
trials use the committed tuning's TRIAL_SEED, so their validation AUCs compare with tuning.json's
(the corner point itself should repeat its 0.9913). Result and decision: tuning_edge_check.json."""
import json, sys
from pathlib import Path
from hfgan_core.benchmark import tuning
from hfgan_core.benchmark.config import BenchmarkConfig
from hfgan_core.benchmark.runner import run_benchmark
GRID = [{"lr": lr, "local_epochs": e} for lr in (1e-2, 3e-2) for e in (2, 4)]  # (1e-2, 2): the committed corner
tuning.candidates = lambda method, fed, dp, *, k, seed: GRID  # these four, not the profile's point first
c = BenchmarkConfig(dataset="brainmri", methods=["fedavg"], seeds=[0], profile="paper", epsilons=[10.0])
run_benchmark(c, sys.argv[1] if len(sys.argv) > 1 else "/tmp/widen/out", progress=False, echo=True)
t = json.load(open(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/widen/out") / "runs.json"))
print(json.dumps(t.get("tuning", t.get("tuned")), indent=1)[:3000])
