#!/usr/bin/env bash
# Issue 13's trajectory curve on 9x9 Sudoku from the generator, on one GPU: TRM from scratch (no LLM;
# recipes/demo_cpu.yaml's core: d 96, 2 attention layers, n 3, T 2, N_sup 8, the core of the CPU depth
# suite) trained at SEEDS in parallel processes for STEPS steps of 256 (or MAX_TIME, whichever comes
# first), then `evaluate --trajectory_curve '[1,4,16]'` on the first LIMIT test puzzles. From the
# repository root, on a machine with the project's dependencies:
#   STEPS=6000 SEEDS="0 1 2" LIMIT=1000 bash eval/gpu/sudoku9_trajectories.sh
# Writes OUT/seed_N/{fit.log, eval.log, trajectories.md, trajectories.json, metrics.json}.
set -euo pipefail
STEPS=${STEPS:-6000}
MAX_TIME=${MAX_TIME:-00:00:07:00}
SEEDS=${SEEDS:-0 1 2}
LIMIT=${LIMIT:-1000}
NUM_TRAIN=${NUM_TRAIN:-10000}
OUT=${OUT:-eval/results/sudoku9_trajectories}
RUNS=${RUNS:-runs/sudoku9_trajectories}
EXTRA=${EXTRA:-}  # more fit flags, e.g. for a CPU smoke test: --trainer.accelerator cpu --data.batch_size 4
TASK="{name: sudoku, size: 9, source: generate, givens: 30, num_train: $NUM_TRAIN, num_validation: 256, num_test: $LIMIT, augment: true}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1
hr() { python -m hybrid_reason.cli "$@"; }

# The generated rows are built once (datasets' cache), before the seeds start in parallel.
python - "$TASK" <<'PY'
import sys, time, yaml
from hybrid_reason.tasks import build_task
opts = yaml.safe_load(sys.argv[1]); t0 = time.perf_counter()
task = build_task(opts.pop("name"), **opts)
print({s: len(task.load(s)) for s in ("train", "validation", "test")}, f"{time.perf_counter() - t0:.0f} s to generate")
PY

mkdir -p "$OUT"
for seed in $SEEDS; do
  mkdir -p "$OUT/seed_$seed"
  hr fit --config recipes/demo_cpu.yaml --model.backbone.name none --data.task "$TASK" \
    --trainer.accelerator gpu --trainer.max_steps "$STEPS" --trainer.max_time "$MAX_TIME" \
    --trainer.val_check_interval 1000 --trainer.limit_val_batches 1 --trainer.enable_progress_bar false \
    --data.batch_size 256 --data.eval_batch_size 256 --data.num_workers 3 \
    --checkpoint.every_n_train_steps 1000 --seed_everything "$seed" \
    --trainer.default_root_dir "$RUNS/seed_$seed" $EXTRA > "$OUT/seed_$seed/fit.log" 2>&1 &
done
wait
for seed in $SEEDS; do
  grep "steps in" "$OUT/seed_$seed/fit.log"
  model=$(sed -n 's/.*exported the EMA model to \(\S*\) .*/\1/p' "$OUT/seed_$seed/fit.log")
  hr evaluate --model "$model" --split test --limit "$LIMIT" --trajectory_curve '[1,4,16]' --seed "$seed" \
    --batch_size 256 --progress false --out "$OUT/seed_$seed/eval" > "$OUT/seed_$seed/eval.log" 2>&1
  cp "$OUT/seed_$seed/eval/"{trajectories.md,trajectories.json,metrics.json} "$OUT/seed_$seed/"
  cat "$OUT/seed_$seed/trajectories.md"
done
