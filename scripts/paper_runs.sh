#!/usr/bin/env bash
# The paper-profile benchmark runs behind tables 1-3, continued across sessions and machines.
#
# On 2 CPU cores the paper profile takes many hours, longer than one session, and a fresh machine
# keeps nothing but the repository. So the runs' finished units (results/paper_runs/<dataset>/units)
# are committed, and this script continues them, on any machine, with the code that made them: the
# commit PIN below, checked out in a worktree (a unit is reused only under the same code hash, so
# later commits on main cannot change a number of these tables). Each dataset runs in its own
# process (one torch thread, nice 19) with --resume; what is finished is never redone. The processes
# run through scripts/paper_trials.py, which keeps each tuning trial (seed 0 tunes every classifier
# with up to 8 trial runs, together sometimes longer than a session) under <dataset>/trials/ as it
# finishes; it changes no number and no code of the pin.
#
#   scripts/paper_runs.sh start [DATASET ...]   # default: pneumoniamnist brainmri; logs in results/paper_runs/<d>.log
#                                               # (SEEDS="3 4" start D: a second process on D, once its seed 0 is done)
#   scripts/paper_runs.sh status                # units per dataset, table rows done and to do per seed, processes
#   scripts/paper_runs.sh stop                  # stop them (finished units stay; the unit being made is lost)
#   scripts/paper_runs.sh preview DATASET       # a table from the seeds finished so far (a copy of the units in
#                                               # /tmp; trains nothing, commits nothing: a check, not a result),
#                                               # rendered by the pin and again by main's report.write_table
#   scripts/paper_runs.sh sweep noniid|ratio DATASET ...  # a sweep around a finished table: every point holds
#                                               # the table's tuning (paper_trials.py); log <d>-<kind>.log
#   scripts/paper_runs.sh dp-recipe DATASET ... # beside a finished table: its DP classifier at the federated
#                                               # DP-SGD recipe instead of its tuning's draw; <d>/dp_recipe/
#   scripts/paper_runs.sh keep                  # before a session ends: git add -f the generators of every GAN block
#                                               # whose rows or judgement are unfinished (the next process reuses them)
#   scripts/paper_runs.sh assemble DATASET      # once its table and curve are finished: the committed table, from
#                                               # the units alone (the pinned notebook, then main's rendering)
#
# Env: EXTRA="--curve-epsilon 1 3 inf" adds arguments to the benchmark (e.g. the privacy-utility
# curve, once the tables are done); SEEDS (default 0 1 2 3 4); WT (the worktree, default
# /tmp/hfgan-paper-$PIN); PYTHON (default .venv/bin/python of this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PIN=889f63f  # the commit whose hfgan_core makes the paper tables (code hash 5bc79e6f...)
WT=${WT:-/tmp/hfgan-paper-$PIN}
SEEDS=${SEEDS:-0 1 2 3 4}  # the table's seeds; one spelling of the default for every command
PYTHON=${PYTHON:-$repo/.venv/bin/python}
out=$repo/results/paper_runs
cmd=${1:-}
[ $# -gt 0 ] && shift

running() { pgrep -f "benchmark --dataset $1 .*--out $out/$1 " || true; }
sweeping() { pgrep -f "paper_trials.py $1 --dataset $2 .*--out $out " || true; }

# Run the pinned hfgan_core command "$@" through scripts/paper_trials.py in the worktree, in the
# background (one torch thread, nice 19), appending to the log $1.
launch() {
  local log=$1; shift
  (cd "$WT" && OMP_NUM_THREADS=1 PYTHONPATH="$WT" FLWR_TELEMETRY_ENABLED=0 nohup nice -n 19 "$PYTHON" \
    "$repo/scripts/paper_trials.py" "$@" --no-progress --resume >> "$log" 2>&1 &)
}

# One line per seed of $SEEDS: "<seed> <rows done> <rows in the table> <yes|no: every row and both GAN
# judgements finished> <methods to do...>", from the pinned code's method list (needs the worktree).
seed_state() {
  PYTHONPATH="$WT" "$PYTHON" - "$1" $SEEDS <<'PY'
import math, sys
from pathlib import Path
from hfgan_core.benchmark.config import METHODS, PRIVATE_ROWS
units, seeds = Path(sys.argv[1]), sys.argv[2:]
def has(*key):  # a unit's file is its key joined by "-" (Units._path)
    return (units / ("-".join(map(str, key)) + ".json")).exists()
for seed in map(int, seeds):
    missing = [m for m in METHODS if not has("row", m, seed, 10.0 if m in PRIVATE_ROWS else math.inf)]
    judged = has("quality", "hfgan", seed, 10.0) and has("quality", "dpfedavg_gan", seed, 10.0)
    print(seed, len(METHODS) - len(missing), len(METHODS), "yes" if judged and not missing else "no", *missing)
PY
}

# Refuse (exit 2) without the pinned worktree (made by the first start).
need_worktree() {
  [ -d "$WT/hfgan_core" ] || { echo "error: no worktree at $WT; run 'scripts/paper_runs.sh start' once first" >&2; exit 2; }
}

# Refuse (exit 2) unless dataset $1's privacy-utility curve (epsilons $CURVE, default 1 3 inf) has every
# row and HF-GAN judgement on every seed of $SEEDS: the pinned CURVE_METHODS, DP-SGD at finite epsilon only.
curve_done() {
  local missing
  missing=$(PYTHONPATH="$WT" "$PYTHON" - "$out/$1/units" "$SEEDS" ${CURVE-1 3 inf} <<'PY'
import math, sys
from pathlib import Path
from hfgan_core.benchmark.config import CURVE_METHODS
units, seeds, curve = Path(sys.argv[1]), sys.argv[2].split(), [float(e) for e in sys.argv[3:]]
for seed in seeds:
    for eps in curve:
        for m in CURVE_METHODS:
            if not (m == "dp_fedavg" and math.isinf(eps)) and not (units / f"row-{m}-{seed}-{eps}.json").exists():
                print(f"row {m} seed {seed} eps {eps}")
        if not (units / f"quality-hfgan-{seed}-{eps}.json").exists():
            print(f"HF-GAN judgement seed {seed} eps {eps}")
PY
)
  [ -z "$missing" ] || { echo "error: $1's curve (epsilon ${CURVE-1 3 inf}) is not finished: $(echo "$missing" | head -3 | paste -sd';') ...; see 'EXTRA=\"--curve-epsilon ${CURVE-1 3 inf}\" scripts/paper_runs.sh start $1'" >&2; exit 2; }
}

# Refuse (exit 2) unless dataset $1's table has every row and GAN judgement on every seed of $SEEDS.
table_done() {
  [ -d "$out/$1/units" ] && [ -z "$(seed_state "$out/$1/units" | awk '$4 != "yes"')" ] \
    || { echo "error: $1's table is not finished on seeds $SEEDS; see 'scripts/paper_runs.sh status'" >&2; exit 2; }
}

case "$cmd" in
start)
  [ -x "$PYTHON" ] || { echo "error: $PYTHON not found; run 'make env' first (or set PYTHON)" >&2; exit 2; }
  if [ ! -d "$WT/hfgan_core" ]; then
    git worktree prune
    git worktree add -q --detach "$WT" "$PIN"
  fi
  mkdir -p "$WT/data" data
  if [ -d ../shared/data ]; then  # as .ci/run does: the shared data files, linked where missing
    for f in ../shared/data/*.npz; do
      [ -e "data/$(basename "$f")" ] || ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "data/$(basename "$f")"
    done
  fi
  for f in "$repo"/data/*.npz; do  # the data files (make test's links to ../shared/data, or your own)
    [ -e "$f" ] && ln -sfn "$(readlink -f "$f")" "$WT/data/$(basename "$f")"
  done
  # extractors: this checkout's folder, so that one trained by the runs lands where it is committed
  if [ ! -L "$WT/results/extractors" ]; then
    rm -rf "$WT/results/extractors"
    ln -s "$repo/results/extractors" "$WT/results/extractors"
  fi
  datasets=("$@")
  [ ${#datasets[@]} -gt 0 ] || datasets=(pneumoniamnist brainmri)
  for d in "${datasets[@]}"; do
    [ -e "$repo/data/$d.npz" ] || { echo "error: data/$d.npz not found; see data/README.md" >&2; exit 2; }
    if [ -n "$(running "$d")" ]; then
      # a second process on other seeds: only once seed 0, where every method is tuned, is finished,
      # and not for the curve (its epsilons are tuned on seed 0 as well)
      busy=$(ps -o args= -p "$(running "$d" | paste -sd,)" | sed -n 's/.*--seeds \([0-9 ]*\) --profile.*/\1/p' | tr ' ' '\n' | sort -u)
      clash=$(comm -12 <(echo "$busy") <(echo $SEEDS | tr ' ' '\n' | sort -u))
      if [ -n "$clash" ] || [ -n "${EXTRA:-}" ] || pgrep -f "benchmark --dataset $d .*--curve-epsilon" > /dev/null \
         || ! SEEDS=0 seed_state "$out/$d/units" | grep -q ' yes'; then
        echo "$d: already running on seeds" $busy "(a second process needs other SEEDS, seed 0 finished, no curve)"
        continue
      fi
    fi
    launch "$out/$d.log" benchmark --dataset "$d" --methods all --seeds $SEEDS --profile paper --epsilon 10 \
      ${EXTRA:-} --out "$out/$d"
    echo "$d: started (log $out/$d.log)"
  done
  ;;
sweep)
  kind=${1:-}; [ $# -gt 0 ] && shift
  case "$kind" in noniid|ratio) ;; *) echo "error: usage: scripts/paper_runs.sh sweep noniid|ratio DATASET ..." >&2; exit 2 ;; esac
  [ $# -gt 0 ] || { echo "error: name the dataset(s) whose table the $kind sweep goes around" >&2; exit 2; }
  need_worktree
  for d in "$@"; do
    # the sweep's headline point copies the table's units once, when it starts: so the table must be finished
    table_done "$d"
    if [ -n "$(running "$d")$(sweeping "$kind" "$d")" ]; then echo "$d: a run or $kind sweep of it is running"; continue; fi
    launch "$out/$d-$kind.log" "$kind" --dataset "$d" --profile paper --seeds $SEEDS --epsilon 10 --out "$out"
    echo "$d: $kind sweep started (log $out/$d-$kind.log)"
  done
  ;;
status)
  for dir in "$out"/*/; do
    d=$(basename "$dir")
    rows=$(find "$dir" -path '*/units/row-*.json' | wc -l)
    judged=$(find "$dir" -path '*/units/quality-*.json' | wc -l)
    echo "$d: $rows rows, $judged GAN judgements; process: $(running "$d" | tr '\n' ' ')"
    if [ -d "$WT/hfgan_core" ]; then  # the table rows (epsilon 10) per seed
      seed_state "$dir/units" | while read -r seed done total complete missing; do
        echo "  seed $seed: $done/$total rows${missing:+; to do: $missing}"
      done
    fi
  done
  ;;
preview)
  # Render the pinned benchmark's table from a copy of the units, for the seeds whose rows and GAN
  # judgements are all finished: every result is reused, so nothing trains (a missing unit would be
  # trained, hence the check). For looking at the run half-way and trying the rendering path early.
  d=${1:-}
  [ -n "$d" ] && [ -d "$out/$d/units" ] || { echo "error: usage: scripts/paper_runs.sh preview DATASET (one of: $(ls "$out" | grep -v '\.' | tr '\n' ' '))" >&2; exit 2; }
  need_worktree
  seeds=$(seed_state "$out/$d/units" | awk '$4 == "yes" {printf "%s ", $1}')
  [ -n "$seeds" ] || { echo "error: $d has no seed with every row and GAN judgement finished yet; see 'scripts/paper_runs.sh status'" >&2; exit 2; }
  tmp=$(mktemp -d /tmp/paper-preview-XXXX)
  cp -r "$out/$d/units" "$out/$d/gan_runs" "$tmp/" 2>/dev/null || cp -r "$out/$d/units" "$tmp/"
  (cd "$WT" && OMP_NUM_THREADS=1 PYTHONPATH="$WT" FLWR_TELEMETRY_ENABLED=0 nice -n 19 "$PYTHON" -m hfgan_core benchmark \
    --dataset "$d" --methods all --seeds $seeds --profile paper --epsilon 10 --out "$tmp" --no-progress --resume > "$tmp/log" 2>&1) \
    || { echo "error: the preview failed; see $tmp/log" >&2; exit 1; }
  # and as the committed table will be: main's render-only report.write_table over the pin's runs.json
  PYTHONPATH="$repo" "$PYTHON" -c "import sys; from hfgan_core.report import write_table; write_table(sys.argv[1], sys.argv[2])" \
    "$tmp" "$tmp/main" >> "$tmp/log" 2>&1 || { echo "error: main's rendering of the preview failed; see $tmp/log" >&2; exit 1; }
  echo "$d, seeds ${seeds% } (preview, not a result): $tmp/table.md (the pin's rendering), $tmp/main/ (main's)"
  ;;
dp-recipe)
  # A supplementary row, not a table row: the DP classifier (DP-SGD FedAvg at epsilon 10) on the table's
  # hospitals and seeds, trained as benchmarks/dp_sgd_federated.py trains it: at the point of the grid
  # nearest the recipe that script tuned on its own (chest X-ray seed 0's validation split: batch 256,
  # lr 4e-3, Adam kept; clipping norm 1 and the 200-round cap as there) instead of the point the
  # 8-draw tuning chose, and to its cap, the round kept by validation, without the profile's early stop
  # (patience 10 stopped it at round 55 of 200 on chest X-ray seed 0, validation AUC still rising;
  # its noise is calibrated for the cap either way). Its units get the table's stamp and a tuning log
  # holding only that point (budget 0, marked).
  [ $# -gt 0 ] || { echo "error: usage: scripts/paper_runs.sh dp-recipe DATASET ..." >&2; exit 2; }
  need_worktree
  for d in "$@"; do
    table_done "$d"
    sub=$out/$d/dp_recipe
    if [ -n "$(pgrep -f "benchmark --dataset $d .*--out $sub " || true)" ]; then echo "$d: dp-recipe already running"; continue; fi
    if [ ! -e "$sub/units/stamp.json" ]; then
      mkdir -p "$sub/units"
      cp "$out/$d/units/extractor.json" "$sub/units/"
      "$PYTHON" - "$out/$d/units/tuning.json" "$sub/units/tuning.json" <<'PY'
import json, sys
table = json.load(open(sys.argv[1]))["dp_fedavg|10.0"]
recipe = {"lr": 0.004, "batch_size": 256, "max_grad_norm": 1.0, "rounds": 200, "keep_optimizer": True, "patience": None}
assert all(recipe[k] in values for k, values in table["space"].items()), "the recipe is not a point of the table's grid"
json.dump({"dp_fedavg|10.0": {"space": table["space"], "seed": table["seed"], "criterion": table["criterion"],
                              "inherited": {}, "budget": 0, "tried": [], "chosen": recipe,
                              "held_from": "the federated DP-SGD recipe (benchmarks/dp_sgd_federated.py, "
                                           "results/dp_sgd_federated.json), not a draw of this grid; to the round cap, no early stop"}},
          open(sys.argv[2], "w"))
PY
      cp "$out/$d/units/stamp.json" "$sub/units/"  # last: a folder with a stamp is a started one
    fi
    launch "$out/$d-dp_recipe.log" benchmark --dataset "$d" --methods dp_fedavg --seeds $SEEDS --profile paper \
      --epsilon 10 --out "$sub"
    echo "$d: dp-recipe rows started (log $out/$d-dp_recipe.log)"
  done
  ;;
assemble)
  # The committed table of a finished run, made the way `make tables` makes every table: the pinned
  # dataset notebook executed by papermill (PROFILE paper, resume) over a copy of the units, which reuses
  # every result and trains nothing (checked: the copy must not gain a unit), then main's render-only
  # code over the pin's runs.json and probas.npz (the paired columns and notes added since the pin, the
  # figures), into results/: the table files, figures, results/<d>/ (runs.json, probas.npz, the GAN
  # runs' logs and sample grids), the executed notebook, and results/README.md.
  d=${1:-}
  nb=$(PYTHONPATH="$repo" "$PYTHON" -c "import sys; from hfgan_core.report import TABLES; print(TABLES[sys.argv[1]].notebook)" "$d" 2>/dev/null) \
    || { echo "error: usage: scripts/paper_runs.sh assemble DATASET (pneumoniamnist, brainmri or retinamnist)" >&2; exit 2; }
  need_worktree
  table_done "$d"
  curve_done "$d"
  if [ -n "$(running "$d")" ]; then echo "error: $d's run is still going; stop it first" >&2; exit 2; fi
  tmp=$(mktemp -d /tmp/paper-assemble-XXXX)
  mkdir -p "$tmp/$d" "$tmp/notebooks"
  cp -r "$out/$d/units" "$tmp/$d/"
  [ -d "$out/$d/gan_runs" ] && cp -r "$out/$d/gan_runs" "$tmp/$d/"
  before=$(ls "$tmp/$d/units" | wc -l)
  epsilons=$(echo 10 ${CURVE-1 3 inf} | sed 's/inf/"inf"/; s/ /, /g')
  (cd "$WT" && OMP_NUM_THREADS=1 PYTHONPATH="$WT" FLWR_TELEMETRY_ENABLED=0 nice -n 19 "$PYTHON" -m papermill \
    "notebooks/$nb" "$tmp/notebooks/$nb" -k python3 -p profile paper -p out_dir "$tmp" -p resume True \
    -y "epsilons: [$epsilons]" > "$tmp/log" 2>&1) || { echo "error: the pinned notebook failed; see $tmp/log" >&2; exit 1; }
  [ "$(ls "$tmp/$d/units" | wc -l)" = "$before" ] \
    || { echo "error: the pinned notebook made units the run lacked (see $tmp/log); nothing copied" >&2; exit 1; }
  rm -rf "$repo/results/$d/gan_runs"
  mkdir -p "$repo/results/$d/gan_runs" "$repo/results/notebooks"
  cp "$tmp/$d/runs.json" "$tmp/$d/probas.npz" "$repo/results/$d/"
  (cd "$tmp/$d/gan_runs" && find . -type f ! -name '*.pt' ! -name 'synthetic.*' -exec cp --parents {} "$repo/results/$d/gan_runs/" \;)
  cp "$tmp/notebooks/$nb" "$repo/results/notebooks/"
  (cd "$repo" && "$PYTHON" - "$d" <<'PY'
import sys
from hfgan_core import report
from hfgan_core.benchmark.tables import write_tables
d = sys.argv[1]
bench = f"results/{d}"
write_tables(bench)  # results/<d>/table.md, .csv
rows = report.write_table(bench, "results")  # results/<stem>.md, .csv, .json
report.plot_samples(bench, report.figure_path("results", d, "samples"))
report.plot_privacy_utility(rows, report.figure_path("results", d, "privacy_utility"),
                            title=f"{d}: privacy-utility (paper profile)")
report.plot_per_hospital(bench, report.figure_path("results", d, "per_hospital"))
report.plot_validation_curves(bench, report.figure_path("results", d, "validation_curves"))
report.write_readme("results", run_line=f"{report.TABLES[d].title} assembled from its `paper` units by "
                    "`scripts/paper_runs.sh assemble` (the pinned notebook, every result reused, then main's "
                    "rendering); each table's footnote gives the profile, code, hardware and wall time of its run.")
PY
  ) >> "$tmp/log" 2>&1 || { echo "error: main's rendering failed; see $tmp/log" >&2; exit 1; }
  echo "$d: assembled into results/ (the pin's rendering and log: $tmp)"
  ;;
keep)
  # A GAN block (its training, rows and judgement) that a session leaves unfinished continues next
  # session only from the same generators (trained again on another CPU they get other weights, and
  # every row, trial and judgement of the block is made again). So stage, with git add -f past
  # .gitignore, each HF-GAN generators.pt and each kept DP-FedAvg-GAN whose block lacks a row or its
  # judgement: HF-GAN's own-images and synthetic-only rows (and the shared pool's at epsilon 10),
  # DP-FedAvg-GAN's row, and each one's quality unit; for the ratio sweep's shared GANs, HF-GAN's row
  # at every ratio. A finished block's generators are not staged.
  "$PYTHON" - "$out" <<'PY' | while read -r g why; do git add -f "$g"; echo "kept: ${g#$repo/} (its block lacks $why)"; done
import re, sys
from pathlib import Path
for g in sorted(Path(sys.argv[1]).glob("**/gan_runs/*")):
    m = re.fullmatch(r"(hfgan|dpfedavg_gan)-seed(\d+)-eps([0-9.]+|inf)(-\w+\.pt)?", g.name)
    if not m or (m[1] == "hfgan") != g.is_dir():
        continue
    kind, seed, eps = m[1], m[2], m[3] if m[3] == "inf" else f"{float(m[3]):.1f}"  # units name 10.0, inf
    weights = g / "generators.pt" if kind == "hfgan" else g
    if not weights.exists():
        continue
    run = g.parent.parent  # <run>/gan_runs/...: the run's units, or for the ratio sweep every ratio point's
    units = [run / "units"] if (run / "units").is_dir() else sorted(run.glob("*/units"))
    need = (["row-dpfedavg_gan", "quality-dpfedavg_gan"] if kind == "dpfedavg_gan" else
            ["row-hfgan", "row-hfgan_synth_only", "quality-hfgan"] + (["row-hfgan_shared"] if eps == "10.0" else []))
    if run.name == "ratio":
        need = ["row-hfgan"]
    missing = [f"{u.parent.name}/{n}" for u in units for n in need if not (u / f"{n}-{seed}-{eps}.json").exists()]
    if missing or not units:
        print(weights, missing[0] if missing else "any units")
PY
  ;;
stop)
  pkill -f "benchmark --dataset .* --out $out/" || true
  pkill -f "paper_trials.py (noniid|ratio) --dataset .*--out $out " || true
  ;;
*)
  echo "usage: scripts/paper_runs.sh start [DATASET ...] | status | preview DATASET | sweep noniid|ratio DATASET ... | dp-recipe DATASET ... | assemble DATASET | keep | stop" >&2
  exit 2
  ;;
esac
