#!/usr/bin/env bash
# The Python packages met2net needs that a GPU machine's image lacks, as wheels in .whl/ (git-ignored), so that a
# machine with no network can install them (tools/device/checks.sh does, from .whl/ carried beside the tree).
#   bash tools/device/wheels.sh            (here, where pip reaches PyPI; 17 MB on 2026-12-01)
# The list is what the workplace's CUDA image (Python 3.12, torch with CUDA, h5py, xarray, mpi4py, safetensors,
# matplotlib, tensorboard, pytest) does not hold: DeepSpeed and what it needs besides, submitit, netCDF4 and cftime,
# as pure-Python wheels or binary ones for CPython 3.12 on manylinux x86-64 (DeepSpeed's is built here from its
# source). The versions are those this checkout's .venv runs its tests with, so the GPU runs the code the CPU tests
# passed on; typing_extensions comes too, since pydantic needs a newer one than an older image may hold.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${MET2NET_PYTHON:-$ROOT/.venv/bin/python}
NAMES=(hjson pydantic pydantic_core annotated_types typing_inspection typing_extensions submitit netCDF4
       cftime)
pins=()
for name in "${NAMES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") \
    || { echo "wheels: $name is not installed in $PY (bash scripts/setup.sh first)" >&2; exit 1; }
  pins+=("$name==$version")
done
mkdir -p "$ROOT/.whl"
rm -f "$ROOT"/.whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$ROOT/.whl" "${pins[@]}"
# PyPI has DeepSpeed's source only: a wheel of its Python code (its CUDA ops compile on first use, with the image's
# nvcc and ninja), built with this .venv's torch and setuptools
ds=$("$PY" -c "import importlib.metadata as m; print(m.version('deepspeed'))")
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$ROOT/.whl" "deepspeed==$ds"
du -sh "$ROOT/.whl"
ls "$ROOT/.whl"
