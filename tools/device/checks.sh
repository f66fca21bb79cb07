#!/usr/bin/env bash
# The GPU checks of issues 17 (item 5) and 18 (item 4) as one prepared run, sized for a short lease of a machine
# with one GPU and no network (this workplace's device tool: its image has torch with CUDA but not DeepSpeed).
#   bash tools/device/wheels.sh                                   here, once: the missing packages into .whl/
#   run(command="bash tools/device/checks.sh", carry=[".whl"], timeout_s=600)     there
# Steps, each under its own time limit, each logged, each allowed to fail without stopping the rest:
#   1. the carried wheels installed into /tmp/site (nothing else is installed: the image's torch is used);
#      versions of the GPU, driver, torch, CUDA, cuDNN, NCCL, DeepSpeed;
#   2. tools/bench/step.py --device cuda: samples/s, % of the measured peak and MFU against the data sheet's,
#      peak memory, the forward/backward/optimizer split, fp32 and bf16, at CHECK_BATCHES (1 16);
#   3. tools/bench/distributed.py --device cuda --precision bf16 --batch 16: DeepSpeed's overhead against the plain
#      loop with NCCL, the same split, MFU (and 2-rank efficiency and ZeRO-3 partitioning where 2 GPUs are visible);
#   4. tools/gpu_smoke.sh on the configurations in CHECK_SMOKE (default: bf16 at ZeRO 2, fp32 at ZeRO 3, and bf16
#      at ZeRO 2 on converted shards): the CUDA unit tests, then each configuration trained with NCCL at world
#      size 1, resumed, consolidated and evaluated; its table of samples/s, MFU and peak memory. CHECK_SMOKE=all
#      runs every configuration (raise CHECK_SMOKE_S to match).
# The limits add up to 9 min 45 s, within one call's 10 minutes; with a machine's start, most of a 15-minute lease.
# Without a GPU that torch can use it says so and exits 0 having run nothing. Results land in $OUT (the device
# tool's folder; runs/device_checks without one) as each step ends: summary.md with every table and each step's
# log; at the end logs.tar.gz with every log the runs wrote.
# Exit status: the number of failed steps.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/runs/device_checks}
WORK=${CHECK_DIR:-/tmp/met2net_checks}
mkdir -p "$OUT" "$WORK"
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
failed=0
export PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$SUMMARY"; }
# $1 name, $2 seconds, then the command: run it with a limit, its output in $WORK/$1.log
step() {
  local name=$1 limit=$2 started=$SECONDS rc; shift 2
  echo "checks: $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  local verdict="FAILED, exit $rc"
  [ "$rc" = 124 ] && verdict+=", over ${limit} s"
  say "- $name: $([ "$rc" = 0 ] && echo ok || echo "$verdict"), $((SECONDS - started)) s"
  cp "$WORK/$name.log" "$OUT/"  # what comes back even if the call runs out of time later
  [ "$rc" = 0 ] || { failed=$((failed + 1)); tail -n 15 "$WORK/$name.log"; }
  return "$rc"
}

PY=${MET2NET_PYTHON:-$(command -v python3)}
why=$("$PY" -c 'import torch; print("" if torch.cuda.is_available() else f"torch {torch.__version__} finds no GPU")' \
  2>&1)
if [ -n "$why" ]; then
  say "checks: SKIPPED: ${why##*$'\n'} (nothing was run)"
  exit 0
fi
if ls .whl/*.whl > /dev/null 2>&1; then
  step install 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} MET2NET_PYTHON=$PY
step versions 45 "$PY" -c '
import shutil, subprocess, torch
query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"]
smi = subprocess.run(query, capture_output=True, text=True).stdout if shutil.which("nvidia-smi") else "no nvidia-smi"
print(smi.strip())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(),
      "NCCL", torch.cuda.nccl.version(), "GPUs", torch.cuda.device_count())
import deepspeed, h5py, xarray, netCDF4, submitit
print("deepspeed", deepspeed.__version__, "h5py", h5py.__version__, "xarray", xarray.__version__,
      "netCDF4", netCDF4.__version__, "submitit", submitit.__version__)
import met2net.cli  # noqa: F401  (the package imports with these versions)
'
{ echo; echo '```'; cat "$WORK/versions.log"; echo '```'; } >> "$SUMMARY"

read -ra batches <<< "${CHECK_BATCHES:-1 16}"
step step-bench "${CHECK_BENCH_S:-120}" "$PY" tools/bench/step.py --device cuda --batches "${batches[@]}" --steps 5
{ echo; sed -n '/^GPU:/,$p' "$WORK/step-bench.log"; } >> "$SUMMARY"

step distributed-bench "${CHECK_DISTRIBUTED_S:-120}" "$PY" tools/bench/distributed.py --device cuda --precision bf16 \
  --batch 16 --steps 5
{ echo; sed -n '/^mv5/,$p' "$WORK/distributed-bench.log"; } >> "$SUMMARY"

export SMOKE_DIR="$WORK/smoke" SMOKE_ONLY="${CHECK_SMOKE:-zero2-bf16 zero3-fp32 shards-zero2-bf16}"
[ "$SMOKE_ONLY" = all ] && unset SMOKE_ONLY
step gpu-smoke "${CHECK_SMOKE_S:-240}" bash tools/gpu_smoke.sh
{ echo; grep -E '^\|' "$WORK/gpu-smoke.log"; grep -E 'gpu_smoke: (FAILED|SKIPPED|all|.*FAILED)' "$WORK/gpu-smoke.log"; } \
  >> "$SUMMARY"

tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.h5' \
  --exclude='*.nc' --exclude='*/checkpoints/*' . 2> /dev/null
say ""
say "checks: $failed step(s) failed; summary in $SUMMARY, logs in $OUT/logs.tar.gz"
exit "$failed"
