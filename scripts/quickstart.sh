#!/usr/bin/env bash
# The main job end to end on the CPU: the built-in WeatherBench-style netCDF dataset is
# converted to HDF5 shards with training-years statistics, then ROUNDS rounds
# (default: the config's training.rounds) of stage one (encoders/decoders learn through the frozen Translator copy)
# then stage two (the Translator learns in the frozen latent space and on the forecast through
# the frozen decoders, starting from stage one's checkpoint). Round r+1's stage one starts from round r's stage two, so the decoders
# learn to read the trained Translator. Then the last round's model is evaluated on the test
# year against persistence and climatology. Extra arguments are config overrides (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/quickstart}
DATA_DIR=${DATA_DIR:-data/quickstart}
CONFIG=configs/quickstart.yaml
# the config's training.rounds (with the overrides), as `met2net submit` and slurm/pipeline.sh read it
ROUNDS=${ROUNDS:-$(.venv/bin/python -c 'import sys
from met2net.config import ConfigError, load_config
try: print(load_config(sys.argv[1], sys.argv[2:]).training.rounds)
except ConfigError as error: sys.exit(f"quickstart.sh: {error}")' "$CONFIG" "$@")}
rm -rf "$RUN_DIR"
compgen -G "$DATA_DIR/netcdf/*/*2012*" > /dev/null ||  # 2010 trains, 2011 validates, 2012 tests
  .venv/bin/met2net data synthetic "$DATA_DIR/netcdf" --years 2010-2012 --grid 32x64
.venv/bin/met2net data convert "$DATA_DIR/netcdf" -c "$CONFIG" -o "$DATA_DIR/shards" data.path="$DATA_DIR/shards"
.venv/bin/met2net data stats "$DATA_DIR/shards" --train-years 2010
for round in $(seq 1 "$ROUNDS"); do
  dir="$RUN_DIR/round_$round"
  init=()
  [ "$round" -gt 1 ] && init=(training.init_from="$RUN_DIR/round_$((round - 1))/checkpoints/stage2")
  common=(run.dir="$dir" data.path="$DATA_DIR/shards")
  .venv/bin/met2net train "$CONFIG" training.schedule=stage1 "${common[@]}" "${init[@]}" "$@"
  .venv/bin/met2net train "$CONFIG" training.schedule=stage2 "${common[@]}" "$@"
done
# the last round's stage two against persistence and climatology on the test year, with plots
.venv/bin/met2net evaluate "$RUN_DIR" -o "$RUN_DIR/evaluation" data.path="$DATA_DIR/shards"
echo "quickstart: done; metrics in $RUN_DIR/round_*/metrics.jsonl, checkpoints in $RUN_DIR/round_*/checkpoints/,"
echo "  evaluation in $RUN_DIR/evaluation/ (report.md, metrics.csv, plots/)"
