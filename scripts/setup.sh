#!/usr/bin/env bash
# Create .venv and install met2net with its test tools. Idempotent: a second run only checks.
#   TORCH_SPEC       torch requirement to install first (default: the CPU build torch==2.13.0)
#   TORCH_INDEX_URL  optional package index for torch (e.g. a CUDA wheel index on a cluster)
#   PYTHON           interpreter to build the venv from (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: $PYTHON is missing or older than 3.10; install Python >= 3.10 or set PYTHON=" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || { echo "setup: 'python3 -m venv' failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, alone: asked for indirectly it would pull a multi-GB CUDA build.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  "${PIP[@]}" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
fi
.venv/bin/python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > .venv/constraints.txt
"${PIP[@]}" install -c .venv/constraints.txt -e '.[test]'
# The real reanalysis of tests/e2e/test_real_data.py and docs/real-data.md, into a cache outside the repository.
bash scripts/fetch_real_data.sh >/dev/null
