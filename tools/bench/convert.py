"""`met2net data convert` against a plain xarray read of the same source files: throughput and peak memory.

Side by side in one run, each measurement in a fresh Python process (so its peak RSS, VmHWM, is its own), on the
same files: read from the page cache after a warm-up read, or, with ``--cold`` (root only), from the disk, the page
cache dropped before every measurement, as a user's first conversion of files on storage reads them:

- xarray: ``xr.open_dataset(path)[var].values`` of every source once (the whole file in memory, no conversion);
- convert: `met2net.data.convert.convert` of the same sources into a new shard directory (read, checks, normalised
  grid, HDF5 shards with checksums, index.json), keeping freed memory as `met2net data convert` does
  (``--default-malloc``: glibc's defaults);
- floor: the same xarray read, then the values written to plain files (16 MiB each) and their sha256 taken in
  memory, without fsync: the least work of a conversion that writes and checksums what it read, on one thread.
  The conversion spreads that work over threads (reading, writing, hashing), so what bounds "convert / xarray" is
  "floor / xarray" times the cores the process may use ("bound" in the table: the three jobs perfectly shared);
- baseline: a process that imports the same modules and reads nothing (what every peak RSS includes).

Throughput is MB of source files (on disk) per second of wall time; memory is peak RSS above the baseline, also as
a multiple of one output shard. Datasets:

- ``multi-year``: one netCDF file per variable holding ``--years`` years of 6-hourly 32×64 float32 (2 variables),
  written into a temporary directory: the case of a multi-year source converted one shard (year) at a time;
- ``ncep``: the NCEP/NCAR monthly ``air.mon.mean.nc`` of docs/real-data.md (78 years in one file), when it is in the
  cache (``scripts/fetch_real_data.sh``).

    .venv/bin/python tools/bench/convert.py [--years 10] [--repeat 2] [--cold] [--default-malloc]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NCEP = Path(os.environ.get("MET2NET_DATA_CACHE", Path.home() / ".cache/met2net")) / "ncep_reanalysis1"
GRID = (32, 64)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
VARS = ("tas", "uas")


def _peak_mb() -> float:
    """This process's peak RSS: VmHWM (getrusage's ru_maxrss would include the parent's, kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB; without /proc


def child(mode: str, src: str, config: str, out: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import numpy as np
    import xarray as xr

    from met2net.config import load_config
    from met2net.data.convert import convert, variable_sources
    from met2net.data.netcdf import find_files
    from met2net.training.host_memory import keep_freed_memory

    cfg = load_config(config)
    tic = time.perf_counter()
    if mode == "xarray":
        for s in variable_sources(cfg):
            for path in find_files(src, s.file_glob):
                with xr.open_dataset(path, engine="netcdf4") as ds:
                    ds[s.var].values  # noqa: B018 - the read is the measurement
    elif mode == "floor":
        Path(out).mkdir(parents=True, exist_ok=True)
        for s in variable_sources(cfg):
            for i, path in enumerate(find_files(src, s.file_glob)):
                with xr.open_dataset(path, engine="netcdf4") as ds:
                    raw = memoryview(np.ascontiguousarray(ds[s.var].values)).cast("B")
                for lo in range(0, raw.nbytes, 16 << 20):
                    piece = raw[lo : lo + (16 << 20)]
                    (Path(out) / f"{s.name}-{i}-{lo}.bin").write_bytes(piece)
                    hashlib.sha256(piece).hexdigest()
                del raw
    elif mode.startswith("convert"):
        if mode == "convert":  # as `met2net data convert` runs it (not with --default-malloc: "convert-default")
            keep_freed_memory(one_arena=True)
        convert(src, cfg, out, progress=False)
    seconds = time.perf_counter() - tic
    print(json.dumps({"seconds": seconds, "peak_mb": _peak_mb()}))


def measure(mode: str, src: Path, config: Path, out: Path, default_malloc: bool = False) -> dict:
    mode = "convert-default" if mode == "convert" and default_malloc else mode
    cmd = [sys.executable, __file__, "--child", mode, str(src), str(config), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode:
        raise SystemExit(f"{mode} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def drop_page_cache() -> None:
    """Write dirty pages out, then drop the page cache (clean pages, dentries, inodes): the next read of any file
    comes from the disk. Linux, as root."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise SystemExit(f"--cold needs to write /proc/sys/vm/drop_caches (Linux, as root): {e}") from e


def write_multi_year(root: Path, years: int) -> Path:
    """One 6-hourly file per variable over ``years`` years from 2001, and its config."""
    import numpy as np
    import xarray as xr

    times = np.arange("2001-01-01", f"{2001 + years}-01-01", 6, dtype="datetime64[h]").astype("datetime64[ns]")
    lat = np.linspace(-87.1875, 87.1875, GRID[0])
    lon = np.arange(GRID[1]) * 360.0 / GRID[1]
    rng = np.random.default_rng(0)
    for name in VARS:
        values = rng.standard_normal((times.size, *GRID), dtype=np.float32)
        ds = xr.Dataset({name: (("time", "lat", "lon"), values)}, coords={"time": times, "lat": lat, "lon": lon})
        ds.to_netcdf(root / f"{name}.nc")
    all_years = list(range(2001, 2001 + years))
    entries = ", ".join(f"{{name: {v}, file_glob: {v}.nc, var: {v}}}" for v in VARS)
    config = root / "config.yaml"
    config.write_text(
        f"model: {{variables: [{', '.join(VARS)}], grid: [{GRID[0]}, {GRID[1]}]}}\n"
        f"data: {{variables: [{entries}], train_years: {all_years[:-1]}, val_years: {all_years[-1:]}, "
        "test_years: []}\n"
    )
    return config


def bench(name: str, src: Path, config: Path, work: Path, repeat: int, cold: bool, default_malloc: bool) -> dict:
    from met2net.config import load_config
    from met2net.data.convert import variable_sources
    from met2net.data.netcdf import find_files

    cfg = load_config(config)
    files = sorted({p for s in variable_sources(cfg) for p in find_files(src, s.file_glob)})
    source_mb = sum(p.stat().st_size for p in files) / 1e6
    measure("xarray", src, config, work / "unused")  # warm the page cache
    rows = {"baseline": [], "xarray": [], "floor": [], "convert": []}
    for i in range(repeat):
        for mode in rows:
            if cold:
                drop_page_cache()
            rows[mode].append(measure(mode, src, config, work / f"{name}-{mode}-{i}", default_malloc))
        shutil.rmtree(work / f"{name}-floor-{i}", ignore_errors=True)  # plain copies of the sources: disk only
    shard_dir = work / f"{name}-convert-0"
    index = json.loads((shard_dir / "index.json").read_text())
    shard_mb = max((shard_dir / e["file"]).stat().st_size for e in index["shards"]) / 1e6
    best = {m: min(r, key=lambda x: x["seconds"]) for m, r in rows.items()}
    peak = {m: max(x["peak_mb"] for x in r) for m, r in rows.items()}
    return {
        "dataset": name,
        "files": len(files),
        "source_mb": source_mb,
        "shards": len(index["shards"]),
        "shard_mb": shard_mb,
        "xarray_mb_s": source_mb / best["xarray"]["seconds"],
        "convert_mb_s": source_mb / best["convert"]["seconds"],
        "floor_mb_s": source_mb / best["floor"]["seconds"],
        "xarray_s": best["xarray"]["seconds"],
        "floor_s": best["floor"]["seconds"],
        "convert_s": best["convert"]["seconds"],
        "baseline_rss_mb": peak["baseline"],
        "xarray_rss_mb": peak["xarray"] - peak["baseline"],
        "convert_rss_mb": peak["convert"] - peak["baseline"],
    }


def table(results: list[dict]) -> str:
    lines = [
        "| dataset | source | shards | xarray read | floor: read, write, sha256 | convert | convert / xarray "
        f"| floor / xarray | bound: {CORES} × floor / xarray | peak RSS above baseline: xarray | convert "
        "| convert / one shard |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['dataset']} | {r['files']} files, {r['source_mb']:.1f} MB | {r['shards']} × {r['shard_mb']:.1f} MB "
            f"| {r['xarray_mb_s']:.0f} MB/s ({r['xarray_s']:.2f} s) "
            f"| {r['floor_mb_s']:.0f} MB/s ({r['floor_s']:.2f} s) "
            f"| {r['convert_mb_s']:.1f} MB/s ({r['convert_s']:.2f} s) | {r['convert_mb_s'] / r['xarray_mb_s']:.1%} "
            f"| {r['floor_mb_s'] / r['xarray_mb_s']:.1%} | {CORES * r['floor_mb_s'] / r['xarray_mb_s']:.1%} "
            f"| {r['xarray_rss_mb']:.0f} MB "
            f"| {r['convert_rss_mb']:.0f} MB | {r['convert_rss_mb'] / r['shard_mb']:.2f}× |"
        )
    baseline = max(r["baseline_rss_mb"] for r in results)
    lines.append(f"\nbaseline (interpreter, xarray, netCDF4, h5py, met2net imported): {baseline:.0f} MB peak RSS")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--years", type=int, default=10, help="years of the synthetic multi-year files (default 10)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the fastest counts (default 2)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--cold", action="store_true", help="drop the page cache before every measurement (root)")
    p.add_argument("--default-malloc", action="store_true", help="convert with glibc's malloc defaults")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="met2net-bench-convert-") as tmp:
        work = Path(tmp)
        src = work / "multi_year"
        src.mkdir()
        config = write_multi_year(src, args.years)
        name = f"multi-year ({args.years} y, 6-hourly)"
        results.append(bench(name, src, config, work, args.repeat, args.cold, args.default_malloc))
        if (NCEP / "air.mon.mean.nc").is_file():
            results.append(
                bench(
                    "ncep air.mon.mean",
                    NCEP,
                    ROOT / "configs/ncep_air_monthly.yaml",
                    work,
                    args.repeat,
                    args.cold,
                    args.default_malloc,
                )
            )
        else:
            print(f"(no {NCEP / 'air.mon.mean.nc'}: run scripts/fetch_real_data.sh to include the real file)")
    where = "the disk (page cache dropped before each measurement)" if args.cold else "the page cache"
    malloc = "with glibc's defaults" if args.default_malloc else "keeping freed memory, as met2net data convert does"
    print(f"sources read from {where}; convert {malloc}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
