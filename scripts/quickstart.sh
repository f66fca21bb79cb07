#!/usr/bin/env bash
# The main job end to end on the CPU: stage one, then stage two initialised from it, on the
# built-in synthetic dataset. Extra arguments are config overrides (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/quickstart}
rm -rf "$RUN_DIR"
.venv/bin/met2net train configs/quickstart.yaml training.schedule=stage1 run.dir="$RUN_DIR" "$@"
.venv/bin/met2net train configs/quickstart.yaml training.schedule=stage2 run.dir="$RUN_DIR" "$@"
echo "quickstart: done; metrics in $RUN_DIR/metrics.jsonl, checkpoints in $RUN_DIR/checkpoints/"
