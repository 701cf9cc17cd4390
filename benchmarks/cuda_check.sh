#!/usr/bin/env bash
# The one script to run when a CUDA GPU is lent (never in CI): the CUDA path end to end, then the
# speed benchmarks. Prints everything the README quotes; keep its total under ~8 minutes.
#
#   bash benchmarks/cuda_check.sh            # on the GPU machine, from the repository root
#
# Needs the project's packages (torch with CUDA, opacus, ...) importable by $PY and the data files
# in data/ (or HFGAN_DATA_DIR).
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-/tmp/hfgan_cuda_check}
rm -rf "$OUT" && mkdir -p "$OUT"  # PAPER_OUT (step 6) may live elsewhere and survive
export FLWR_TELEMETRY_ENABLED=0
$PY - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)
EOF

echo "== 1. tests that need CUDA (resume on the GPU continues every hospital's stream)"
$PY -m pytest -q tests/test_engine.py -k cuda

echo "== 2. training on the GPU, then resume"
$PY -m hfgan_core train --dataset pneumoniamnist --rounds 40 --epsilon 10 --device cuda --stop-after 20 \
    --checkpoint-every 10 --out "$OUT/train" --no-progress
$PY -m hfgan_core train --out "$OUT/train" --resume --no-progress

echo "== 3. the benchmark on the GPU (smoke profile: every method, FedAvg, DP-SGD, DP-FedAvg-GAN, extractor, FID/IS)"
$PY -m hfgan_core benchmark --dataset pneumoniamnist --methods all --seeds 0 --profile smoke --device cuda \
    --out "$OUT/bench" --no-progress

echo "== 4. generator quality on the GPU (one short run)"
$PY -m hfgan_core quality --datasets pneumoniamnist --seeds 0 --epsilon 10 --rounds 50 --device cuda \
    --out "$OUT/quality" --no-progress

echo "== 5. speed"
$PY benchmarks/round_speed.py --devices cpu cuda --repeats 3
$PY benchmarks/dp_step.py --device cuda --no-opacus
$PY benchmarks/dp_step.py --device cuda

# 6. (optional: PAPER_SECONDS=300 bash benchmarks/cuda_check.sh) how far the paper profile gets on the GPU in
#    that many seconds; run it again with the same OUT to continue (--resume), and the units say what each
#    result cost: the numbers to size a full paper run on this card.
if [ "${PAPER_SECONDS:-0}" -gt 0 ]; then
  echo "== 6. the paper profile on the GPU for ${PAPER_SECONDS} s (chest X-ray; resumable)"
  timeout "${PAPER_SECONDS}" $PY -m hfgan_core benchmark --dataset pneumoniamnist --methods all --seeds 0 1 2 3 4 \
      --profile paper --device cuda --epsilon 10 --curve-epsilon 1 3 inf --out "${PAPER_OUT:-$OUT/paper}" \
      --no-progress --resume || true
  $PY - "${PAPER_OUT:-$OUT/paper}/units" <<'PYEOF'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("row-*.json"), key=lambda p: p.stat().st_mtime):
    u = json.loads(f.read_text())
    print(f"{f.stem}: {u['wall_time_s']:.0f} s, best round {u['classifier']['best_round']}, acc {u['accuracy']:.3f}")
PYEOF
fi
