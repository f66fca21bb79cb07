#!/usr/bin/env bash
# Fetch the real reanalysis the tests and docs/real-data.md use, once, into a cache directory (never the repository):
# NCEP/NCAR Reanalysis 1 monthly mean air temperature at sigma 0.995, air.mon.mean.nc (73 × 144, 2.5°, both
# poles, monthly from 1948). It ships inside the source distribution of the PyPI package pyunicorn 1.0.0, so pip
# fetches it from PyPI like any package; the file is checked against its sha256 before it is used.
#   MET2NET_DATA_CACHE  cache directory (default: ${XDG_CACHE_HOME:-~/.cache}/met2net)
#   MET2NET_REAL_DATA   0: do not fetch (tests/e2e/test_real_data.py then skips, saying so)
# Prints the file's path. Exit 1 when it cannot be fetched or its checksum differs.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MET2NET_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/met2net}
DEST="$CACHE/ncep_reanalysis1/air.mon.mean.nc"
SHA256=57ffdc5f0b57fde8abe28a838b252455307aa0c6de0846b8f3233fb44de57493
MEMBER=pyunicorn-1.0.0/docs/source/examples/tutorials/data/air.mon.mean.nc

if [ "${MET2NET_REAL_DATA:-1}" = 0 ]; then
  echo "fetch_real_data: MET2NET_REAL_DATA=0, not fetching $DEST (tests/e2e/test_real_data.py will skip)" >&2
  exit 0
fi
if [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --status; then
  echo "$DEST"
  exit 0
fi
mkdir -p "$(dirname "$DEST")"
WORK=$(mktemp -d "$(dirname "$DEST")/.fetch.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# --no-binary pyunicorn: its source distribution, the only one with the data; --no-deps: nothing else.
if ! .venv/bin/python -m pip download --disable-pip-version-check -q --no-deps --no-binary pyunicorn \
    pyunicorn==1.0.0 -d "$WORK" >"$WORK/pip.log" 2>&1; then
  cat "$WORK/pip.log" >&2
  echo "fetch_real_data: pip could not download the pyunicorn 1.0.0 source distribution (above); without it" \
    "tests/e2e/test_real_data.py fails. Copy air.mon.mean.nc (sha256 $SHA256) to $DEST, or set" \
    "MET2NET_REAL_DATA=0 to go without the real-data test" >&2
  exit 1
fi
tar --no-same-owner -xzf "$WORK"/pyunicorn-1.0.0.tar.gz -C "$WORK" "$MEMBER"
if ! echo "$SHA256  $WORK/$MEMBER" | sha256sum -c --status; then
  echo "fetch_real_data: $MEMBER in pyunicorn-1.0.0.tar.gz has sha256 $(sha256sum "$WORK/$MEMBER" | cut -d' ' -f1)," \
    "expected $SHA256; not using it" >&2
  exit 1
fi
chmod 0644 "$WORK/$MEMBER"
mv "$WORK/$MEMBER" "$DEST"  # same directory tree: an atomic rename, never a half-written file
echo "$DEST"
