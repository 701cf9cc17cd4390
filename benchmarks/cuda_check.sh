#!/usr/bin/env bash
# The one script to run when a CUDA GPU is lent (never in CI): the CUDA path end to end, then the
# speed benchmarks. Prints everything the README quotes; keep its total under ~6 minutes.
#
#   bash benchmarks/cuda_check.sh            # on the GPU machine, from the repository root
#
# Needs the project's packages (torch with CUDA, opacus, ...) importable by $PY and the data files
# in data/ (or HFGAN_DATA_DIR). A step that fails is reported and the next one still runs (device
# time is scarce: one failure should not cost the other measurements); the exit status is non-zero
# if any step failed, and the last line lists them. STEPS="1 5" runs those steps alone (default: 1 to 5);
# ROUND_DEVICES="cuda" times the round engines on the GPU only (default: cpu cuda); WORKERS: benchmark
# processes sharing the GPU in steps 5 and 6 (default 8).
set -uo pipefail
PY=${PY:-python}
OUT=${OUT:-/tmp/hfgan_cuda_check}
mkdir -p "$OUT"
export FLWR_TELEMETRY_ENABLED=0 PYTHONUNBUFFERED=1
FAILED=()
step() {  # step NAME COMMAND...: run it, time it, remember a failure
  local name=$1 start=$SECONDS
  shift
  "$@" || FAILED+=("$name")
  echo "-- $name: $((SECONDS - start)) s"
}
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)' || exit 1

STEPS=" ${STEPS:-1 2 3 4 5} "
want() { [[ $STEPS == *" $1 "* ]]; }
if want 1; then
  echo "== 1. the tests on CUDA (clipping = brute force; batched uploads = the reference loop's; resume; TF32 off)"
  step tests $PY -m pytest -q -p no:cacheprovider tests/test_clipping.py tests/test_engine.py -k "cuda or float32"
fi
if want 2; then
  echo "== 2. training on the GPU, then resume"
  step train $PY -m hfgan_core train --dataset pneumoniamnist --rounds 40 --epsilon 10 --device cuda --stop-after 20 \
      --checkpoint-every 10 --out "$OUT/train" --no-progress
  step resume $PY -m hfgan_core train --out "$OUT/train" --resume --no-progress
fi
if want 3; then
  echo "== 3. the benchmark on the GPU (smoke profile: every method, FedAvg, DP-SGD, DP-FedAvg-GAN, extractor, FID/IS)"
  step benchmark $PY -m hfgan_core benchmark --dataset pneumoniamnist --methods all --seeds 0 --profile smoke \
      --device cuda --out "$OUT/bench" --no-progress
fi
if want 4; then
  echo "== 4. generator quality on the GPU (one short run)"
  step quality $PY -m hfgan_core quality --datasets pneumoniamnist --seeds 0 --epsilon 10 --rounds 50 --device cuda \
      --out "$OUT/quality" --no-progress
fi
if want 5; then
  echo "== 5. speed (and where a batched round's time goes)"
  step round_speed $PY benchmarks/round_speed.py --devices ${ROUND_DEVICES:-cpu cuda} --repeats 3 --profile
  step dp_step_no_opacus $PY benchmarks/dp_step.py --device cuda --no-opacus
  step dp_step $PY benchmarks/dp_step.py --device cuda
  step workers $PY benchmarks/benchmark_workers.py --device cuda --workers "${WORKERS:-8}" --threads 1 --seeds 0 1
fi

# 6. (optional: PAPER_SECONDS=300 bash benchmarks/cuda_check.sh) how far the paper profile gets on the GPU in
#    that many seconds, its rows made by WORKERS processes side by side (default 8); run it again with the
#    same PAPER_OUT to continue (--resume), and the units say what each result cost: the numbers to size a
#    full paper run on this card.
if [ "${PAPER_SECONDS:-0}" -gt 0 ]; then
  echo "== 6. the paper profile on the GPU for ${PAPER_SECONDS} s (${PAPER_DATASET:=pneumoniamnist}; resumable)"
  timeout "${PAPER_SECONDS}" $PY -m hfgan_core benchmark --dataset "$PAPER_DATASET" --methods all --seeds 0 1 2 3 4 \
      --profile paper --device cuda --epsilon 10 --out "${PAPER_OUT:=$OUT/paper}" --no-progress --resume \
      --workers "${WORKERS:-8}"
  echo "-- paper: exit $? after at most ${PAPER_SECONDS} s (124: stopped by the timeout, as planned)"
  $PY - "$PAPER_OUT/units" <<'PYEOF'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("row-*.json"), key=lambda p: p.stat().st_mtime):
    u = json.loads(f.read_text())
    print(f"{f.stem}: {u['wall_time_s']:.0f} s, best round {u['classifier'].get('best_round')}, "
          f"acc {u['accuracy']:.3f}, AUC {u['auc']:.3f}")
PYEOF
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED steps: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
