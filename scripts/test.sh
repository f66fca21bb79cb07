#!/usr/bin/env bash
# Set up (idempotent), lint, start the local Slurm cluster (tools/local_slurm, needs root or sudo -n;
# MET2NET_SLURM=0 runs without it and its tests), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check met2net tests tools
.venv/bin/ruff format --check met2net tests tools
if [ "${MET2NET_SLURM:-1}" != 0 ]; then
  if [ "$(id -u)" = 0 ]; then AS_ROOT=(env); elif sudo -n true 2>/dev/null; then AS_ROOT=(sudo -n env)
  else
    echo "test: the Slurm tests need root or passwordless sudo to start tools/local_slurm;" \
      "run as root, or set MET2NET_SLURM=0 to run without them" >&2
    exit 1
  fi
  if [ ${#AS_ROOT[@]} -gt 0 ]; then
    mapfile -t knobs < <(env | grep '^MET2NET_SLURM_' || true)
    AS_ROOT+=("${knobs[@]}")
    # stop the cluster afterwards only if this run started it (another one may be using it)
    if ! "${AS_ROOT[@]}" bash tools/local_slurm/start.sh --status; then
      trap '"${AS_ROOT[@]}" bash tools/local_slurm/stop.sh' EXIT
      trap 'exit 130' INT TERM
    fi
    "${AS_ROOT[@]}" bash tools/local_slurm/start.sh || { echo "test: the local Slurm cluster did not start" >&2; exit 1; }
    export MET2NET_SLURM_REQUIRED=1   # tests/slurm fail (not skip) if the cluster is gone
  fi
fi
.venv/bin/python -m pytest "$@"
