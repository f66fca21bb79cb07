#!/usr/bin/env bash
# The main job end to end on the CPU: the built-in WeatherBench-style netCDF dataset is
# converted to HDF5 shards with training-years statistics, then ROUNDS rounds
# (default 2) of stage one (encoders/decoders learn through the frozen Translator copy)
# then stage two (the Translator learns in the frozen latent space, starting from stage
# one's checkpoint). Round r+1's stage one starts from round r's stage two, so the decoders
# learn to read the trained Translator. Extra arguments are config overrides (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/quickstart}
DATA_DIR=${DATA_DIR:-data/quickstart}
ROUNDS=${ROUNDS:-2}
rm -rf "$RUN_DIR"
[ -d "$DATA_DIR/netcdf" ] || .venv/bin/met2net data synthetic "$DATA_DIR/netcdf" --years 2010-2011 --grid 32x64
.venv/bin/met2net data convert "$DATA_DIR/netcdf" -c configs/quickstart.yaml -o "$DATA_DIR/shards" data.path="$DATA_DIR/shards"
.venv/bin/met2net data stats "$DATA_DIR/shards" --train-years 2010
for round in $(seq 1 "$ROUNDS"); do
  dir="$RUN_DIR/round_$round"
  init=()
  [ "$round" -gt 1 ] && init=(training.init_from="$RUN_DIR/round_$((round - 1))/checkpoints/stage2")
  common=(run.dir="$dir" data.path="$DATA_DIR/shards")
  .venv/bin/met2net train configs/quickstart.yaml training.schedule=stage1 "${common[@]}" "${init[@]}" "$@"
  .venv/bin/met2net train configs/quickstart.yaml training.schedule=stage2 "${common[@]}" "$@"
done
echo "quickstart: done; metrics in $RUN_DIR/round_*/metrics.jsonl, checkpoints in $RUN_DIR/round_*/checkpoints/"
