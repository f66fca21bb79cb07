#!/usr/bin/env bash
# Set up (idempotent), lint, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check met2net tests tools
.venv/bin/python -m pytest "$@"
