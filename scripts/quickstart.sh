#!/usr/bin/env bash
# The main job end to end on the CPU, on the built-in synthetic dataset: ROUNDS rounds
# (default 2) of stage one (encoders/decoders learn through the frozen Translator copy)
# then stage two (the Translator learns in the frozen latent space, starting from stage
# one's checkpoint). Round r+1's stage one starts from round r's stage two, so the decoders
# learn to read the trained Translator. Extra arguments are config overrides (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/quickstart}
ROUNDS=${ROUNDS:-2}
rm -rf "$RUN_DIR"
for round in $(seq 1 "$ROUNDS"); do
  dir="$RUN_DIR/round_$round"
  init=()
  [ "$round" -gt 1 ] && init=(training.init_from="$RUN_DIR/round_$((round - 1))/checkpoints/stage2")
  .venv/bin/met2net train configs/quickstart.yaml training.schedule=stage1 run.dir="$dir" "${init[@]}" "$@"
  .venv/bin/met2net train configs/quickstart.yaml training.schedule=stage2 run.dir="$dir" "$@"
done
echo "quickstart: done; metrics in $RUN_DIR/round_*/metrics.jsonl, checkpoints in $RUN_DIR/round_*/checkpoints/"
