#!/usr/bin/env bash
# GPU smoke test: does met2net train, resume, consolidate and evaluate on real GPUs, and how fast.
#   bash tools/gpu_smoke.sh                       (from anywhere; uses the repository's .venv)
# Without a GPU it prints why and exits 0 ("SKIPPED"): it is never part of CI's pass condition.
#
# On one GPU: SMOKE_STEPS (20) optimizer steps of configs/mv5_5.625.yaml on DeepSpeed with the NCCL backend at world
# size 1, ZeRO 0-3, fp32 and bf16 (ZeRO 0 with gradient accumulation 2: at one rank without it met2net runs the
# plain-PyTorch engine, which is timed too, as "local"); each run then resumes from its checkpoint for 5 more steps,
# is consolidated (`met2net consolidate`) and evaluated (`met2net evaluate`). With 2 or more GPUs, the same on 2 GPUs
# in both layouts: every rank sees both GPUs (torchrun, cuda:<local rank>) and one GPU per rank (each process gets
# its own CUDA_VISIBLE_DEVICES, as --gpu-bind=single:1 does, and trains on cuda:0).
# Prints one table row per configuration: samples/s (median after 5 warm-up steps), model TFLOP/s and MFU
# (tools/gpu_smoke_report.py says against which peak), peak GPU memory (torch.cuda.max_memory_allocated).
#
# Data: the built-in synthetic fields on the mv5 grid and variables (one year each for train/val/test, 6-hourly),
# or SMOKE_DATA="data.source=shards data.path=/scratch/mv5/shards" for converted WeatherBench data.
# SMOKE_ONLY="zero2-bf16 zero3-fp32" runs those configurations only; SMOKE_DIR (runs/gpu_smoke) holds runs and logs;
# SMOKE_OVERRIDES="k=v ..." adds config overrides to every run; SMOKE_REHEARSAL=1 runs it all on the CPU instead.
# Also: the CUDA unit tests (tests/unit/test_hot_path.py -k gpu; the fast kernels against the plain layers in
# tests/unit/test_model.py), and with the default data one run on shards
# ("shards-zero2-bf16": batches normalised on the device) converted from the same synthetic fields.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${MET2NET_PYTHON:-$ROOT/.venv/bin/python}
OUT=${SMOKE_DIR:-runs/gpu_smoke}
STEPS=${SMOKE_STEPS:-20}
CONFIG=${SMOKE_CONFIG:-configs/mv5_5.625.yaml}
read -ra DATA <<< "${SMOKE_DATA:-data.source=synthetic data.train_years=[2010] data.val_years=[2011] data.test_years=[2012] data.step_hours=6}"
read -ra EXTRA <<< "${SMOKE_OVERRIDES:-}"
REPORT=(env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$ROOT/tools/gpu_smoke_report.py")

skip() { echo "gpu_smoke: SKIPPED: $* (nothing was run)"; exit 0; }
if [ -n "${SMOKE_REHEARSAL:-}" ]; then
  # The script itself, every launch and check, on the CPU with gloo as if there were 2 GPUs
  # (tests/e2e/test_gpu_smoke_rehearsal.py): what a GPU run needs besides the GPU. Its numbers mean nothing.
  num_gpus=2
  banner="REHEARSAL on the CPU (gloo), no GPU: its numbers mean nothing"
else
  command -v nvidia-smi > /dev/null 2>&1 || skip "no nvidia-smi on this machine: no NVIDIA driver, so no GPU"
  nvidia-smi -L > /dev/null 2>&1 || skip "nvidia-smi finds no GPU: $(nvidia-smi -L 2>&1 | head -n 1)"
  [ -x "$PY" ] || skip "no Python at $PY (bash scripts/setup.sh, or set MET2NET_PYTHON)"
  read -r num_gpus why <<< "$("${REPORT[@]}" gpus)"
  [ "$num_gpus" -ge 1 ] 2> /dev/null || skip "${why:-torch.cuda finds no GPU}"
  banner="$num_gpus GPU(s): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1) ..."
fi

# the GPUs this script may use, as CUDA_VISIBLE_DEVICES names them (all of torch's when it is unset)
IFS=, read -ra visible <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((num_gpus - 1)))}"
mkdir -p "$OUT"
echo "gpu_smoke: $banner; runs and logs in $OUT"
COMMON=("$CONFIG" "${DATA[@]}" training.max_steps="$STEPS" training.log_every=1 training.val_batches=2
        training.progress=false "${EXTRA[@]}")
failures=0
rows=()

fail() { echo "gpu_smoke: FAILED: $1 (log: $2)" >&2; tail -n 20 "$2" >&2; failures=$((failures + 1)); }

selected() { [ -z "${SMOKE_ONLY:-}" ] || [[ " $SMOKE_ONLY " == *" $1 "* ]]; }

# $1 name, $2 launch: one|torchrun2|pertask2, then overrides; trains, resumes, consolidates, evaluates, adds a row
smoke() {
  local name=$1 how=$2; shift 2
  selected "$name" || return 0
  local dir="$OUT/$name" log="$OUT/$name.log"
  rm -rf "$dir" "$log"
  echo "gpu_smoke: $name: training $STEPS steps"
  launch "$how" "$log" "${COMMON[@]}" run.dir="$dir" "$@" || { fail "$name: training" "$log"; return 0; }
  local flops line
  flops=$(CUDA_VISIBLE_DEVICES=${visible[0]} "${REPORT[@]}" flops "${COMMON[@]}" "$@" 2>> "$log") \
    || { fail "$name: FLOP count" "$log"; return 0; }
  line=$("${REPORT[@]}" row "$dir" "$name" "$flops") || fail "$name: no timed steps" "$log"
  rows+=("$line")
  launch "$how" "$log" "${COMMON[@]}" run.dir="$dir" training.max_steps=$((STEPS + 5)) "$@" \
    && "${REPORT[@]}" resumed "$dir" "$STEPS" >> "$log" || { fail "$name: resume" "$log"; return 0; }
  CUDA_VISIBLE_DEVICES=${visible[0]} "$PY" -m met2net.cli consolidate "$dir" -o "$dir/consolidated" >> "$log" 2>&1 \
    || { fail "$name: consolidate" "$log"; return 0; }
  CUDA_VISIBLE_DEVICES=${visible[0]} "$PY" -m met2net.cli evaluate "$dir/consolidated" -o "$dir/evaluation" \
    --no-plots >> "$log" 2>&1 || { fail "$name: evaluate" "$log"; return 0; }
  echo "gpu_smoke: $name: trained, resumed, consolidated, evaluated"
}

# $1 how, $2 log, then the `met2net train` arguments
launch() {
  local how=$1 log=$2; shift 2
  case "$how" in
    one) CUDA_VISIBLE_DEVICES=${visible[0]} "$PY" -m met2net.cli train "$@" >> "$log" 2>&1 ;;
    torchrun2) CUDA_VISIBLE_DEVICES=${visible[0]},${visible[1]} "$(dirname "$PY")/torchrun" --standalone \
                 --nproc_per_node 2 -m met2net.cli train "$@" >> "$log" 2>&1 ;;
    pertask2)  # what --gpu-bind=single:1 gives each task: one device, its own
      local port rank pids=() rc=0
      port=$("$PY" -c "from met2net.distributed.env import free_port; print(free_port())")
      for rank in 0 1; do
        CUDA_VISIBLE_DEVICES=${visible[$rank]} RANK=$rank WORLD_SIZE=2 LOCAL_RANK=$rank LOCAL_WORLD_SIZE=2 \
          MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$PY" -m met2net.cli train "$@" >> "$log" 2>&1 &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
      return "$rc" ;;
  esac
}

# The CUDA unit tests that skip on the CPU: batches sent from pinned memory, normalised on the device, equal the host's;
# the fused attention and the phase-split convolution equal the plain layers on the GPU
CUDA_VISIBLE_DEVICES=${visible[0]} "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/unit/test_hot_path.py" -k "gpu or cuda" \
  "$ROOT/tests/unit/test_model.py::test_fast_kernels_equal_the_reference_layers" \
  > "$OUT/cuda-tests.log" 2>&1 || fail "CUDA unit tests" "$OUT/cuda-tests.log"

# On a GPU the training loader hands over raw windows of shards and the step normalises them on the device
# (docs/performance.md, Data loader); the built-in data above never reads shards, so one run trains on converted ones:
# the same synthetic fields as netCDF files → shards → statistics (what scripts/quickstart.sh does).
SHARDS="$OUT/shards"
if [ -z "${SMOKE_DATA:-}" ] && [ "$CONFIG" = configs/mv5_5.625.yaml ] && [ ! -f "$SHARDS/stats.json" ] \
   && selected shards-zero2-bf16; then
  { "$PY" -m met2net.cli data synthetic "$OUT/netcdf" --years 2010-2012 --grid 32x64 \
    && "$PY" -m met2net.cli data convert "$OUT/netcdf" -c configs/quickstart.yaml -o "$SHARDS" data.path="$SHARDS" \
    && "$PY" -m met2net.cli data stats "$SHARDS" --train-years 2010; } > "$OUT/shards.log" 2>&1 \
    || fail "shards: synthetic netCDF, convert, stats" "$OUT/shards.log"
fi
if [ -f "$SHARDS/stats.json" ]; then
  smoke "shards-zero2-bf16" one training.precision=bf16 deepspeed.zero_stage=2 data.source=shards data.path="$SHARDS"
fi

for precision in fp32 bf16; do
  smoke "local-$precision" one training.precision=$precision deepspeed.zero_stage=0
  smoke "zero0-$precision" one training.precision=$precision deepspeed.zero_stage=0 deepspeed.gradient_accumulation=2
  for zero in 1 2 3; do
    smoke "zero$zero-$precision" one training.precision=$precision deepspeed.zero_stage=$zero
  done
done
if [ "${#visible[@]}" -ge 2 ]; then
  for precision in fp32 bf16; do
    for zero in 1 3; do
      smoke "2gpu-node-zero$zero-$precision" torchrun2 training.precision=$precision deepspeed.zero_stage=$zero
      smoke "2gpu-task-zero$zero-$precision" pertask2 training.precision=$precision deepspeed.zero_stage=$zero
    done
  done
else
  echo "gpu_smoke: one GPU: the 2-GPU runs are skipped"
fi

echo
echo "| configuration | GPUs (rank→host:device) | samples/s | model FLOP/s, MFU | peak memory |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ "$failures" -gt 0 ]; then
  echo "gpu_smoke: $failures step(s) FAILED (above)" >&2
  exit 1
fi
echo "gpu_smoke: all configurations trained, resumed, consolidated and evaluated"
