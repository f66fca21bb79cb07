"""netCDF or Zarr → HDF5 shards: `met2net data convert SRC -c CONFIG -o SHARDS`.

One shard per year of the config's splits, channels in ``model.variables`` order. Each variable is read through
``data.variables`` (name, file_glob, var, level) or, when it is not listed there, from the WeatherBench layout
(``2m_temperature/*.nc``, variable ``t2m``, ...); a source is a netCDF file or a Zarr store, and only the year being
written is read from it (met2net/data/netcdf.py). All variables must share one time axis and one grid; a gap in time
is an error unless ``data.allow_gaps`` (windows never cross a gap). The step is a number of hours, or of calendar
months for monthly data (every time on the 1st of its month at one hour: met2net/data/timestep.py). Under
``mpirun``/``srun`` rank r writes the years i with i mod N = r and rank 0 writes ``index.json`` after all of them.
``index.json`` records the sources and settings; a re-run with the same ones keeps every shard whose checksum still
matches the index, one with others is refused unless ``--force`` (met2net/data/reconvert.py).
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import xarray as xr
from tqdm import tqdm

from met2net.config import Config, VariableSource
from met2net.data import masks, reconvert, shards
from met2net.data.ahead import Ahead
from met2net.data.atomic import Publisher, atomic_write_sha256, fsync
from met2net.data.netcdf import (
    OpenSources,
    coordinate_names,
    find_files,
    hdf5_from_two_threads_is_safe,
    open_parts,
    open_source,
    source_times,
    with_our_names,
)
from met2net.data.stats import STATS_NAME
from met2net.data.synthetic import VARIABLES
from met2net.data.timestep import TimeStep, of_times
from met2net.errors import UserError

if TYPE_CHECKING:
    from mpi4py.MPI import Comm


def variable_sources(cfg: Config) -> list[VariableSource]:
    """The source of every model variable, in channel order."""
    listed = {v.name: v for v in cfg.data.variables}
    sources = []
    for name in cfg.model.variables:
        if name in listed:
            sources.append(listed[name])
        elif name in VARIABLES:
            info = VARIABLES[name]
            sources.append(VariableSource(name, f"{info['long_name']}/*.nc", info["var"], info["level"] or -1))
        else:
            raise UserError(
                f"model variable {name!r} has no source: add data.variables entry "
                f"{{name: {name}, file_glob: ..., var: ..., level: ...}}"
            )
    return sources


def file_years(path: Path, coords: Mapping[str, str] | None = None, opened: OpenSources | None = None) -> set[int]:
    """Years covered by a source's time axis (reads the coordinates only, so a layout we cannot read fails here,
    before anything is written); ``opened``: keep the source open for the conversion that follows (each source is
    then opened and its time axis decoded once, not once here and again to read it)."""
    if opened is not None:
        times = opened.get(path)[1]
    else:
        with open_source(path) as ds:
            ds = with_our_names(ds, coordinate_names(ds, str(path), coords))
            times, _ = source_times(ds, str(path))
    return set(np.unique(times.astype("datetime64[Y]").astype(int) + 1970).tolist())


@dataclass(frozen=True)
class _Axes:
    """The time axis and grid of one variable's year, which every other variable must share."""

    name: str
    files: list[str]
    times: np.ndarray
    calendar: str
    lat: np.ndarray
    lon: np.ndarray

    @classmethod
    def of(cls, name: str, files: list[Path], parts: list[xr.DataArray]) -> _Axes:
        times = np.concatenate([part["time"].values for part in parts])
        first, calendar = parts[0], parts[0]["time"].attrs["calendar"]
        return cls(name, [str(p) for p in files], times, calendar, first["lat"].values, first["lon"].values)


@dataclass
class Year:
    """One shard's worth of sources, opened and checked but not read: `write_year` reads and writes it."""

    year: int
    times: np.ndarray  # datetime64[h]
    meta: shards.ShardMeta
    step: TimeStep | None  # None: fewer than two times
    variables: list[tuple[VariableSource, _Axes, list[xr.DataArray]]]  # per channel, its parts in time order, unread


def open_year(
    year: int,
    sources: list[VariableSource],
    files: dict[str, dict[int, list[Path]]],
    subsample: int,
    allow_gaps: bool,
    coords: Mapping[str, str] | None,
    opened: OpenSources,
) -> Year:
    """Every variable's ``year``, checked to share time axis and grid, its time step and the shard's description,
    before any value is read (`open_parts`: a variable's year may span several source files); ``opened``: the
    sources, kept open until the year is written."""
    variables, units, long_names = [], [], []
    for src in sources:
        paths = files[src.name].get(year, [])
        if not paths:
            raise UserError(
                f"variable {src.name!r} has no data for {year} (file_glob {src.file_glob!r}); "
                f"add its files or remove {year} from the data years"
            )
        parts = open_parts(paths, src.var, None if src.level < 0 else src.level, coords, year, opened)
        axes = _Axes.of(src.name, paths, parts)
        if variables:
            _same_axes(variables[0][1], axes, year)
        variables.append((src, axes, parts))
        units.append(str(parts[0].attrs.get("units", "")))
        long_names.append(str(parts[0].attrs.get("long_name", src.var)))
    first = variables[0][1]
    times = first.times.astype("datetime64[h]")
    step = of_times(times, str(first.files), allow_gaps, first.calendar)
    meta = shards.ShardMeta(
        channels=[s.name for s in sources],
        units=units,
        long_names=long_names,
        levels=[s.level for s in sources],
        lat=first.lat[::subsample],
        lon=first.lon[::subsample],
    )
    return Year(year, times, meta, step, variables)


def write_year(
    path: Path,
    year: Year,
    blocks: Iterator[tuple[int, np.ndarray] | object],
    subsample: int,
    missing: Mapping[str, str],
    publisher: Publisher | None = None,
) -> str | Future[str]:
    """``year`` written as the shard ``path``, a block of times of one variable at a time as ``blocks`` delivers
    them (`reading`: each channel's blocks in turn, each channel's last followed by ``END``); returns its sha256 (or,
    with a ``publisher``, its future: `shards.write_shard`). ``missing``: the policy for missing values per variable
    (``data.missing``; met2net/data/masks.py).

    Memory stays at a few blocks, whatever the size of the shard or of the source files: the year is never
    assembled. Missing values are refused (or filled) block by block, before the block is written; a refusal
    removes the unfinished file, so nothing of the year is published.
    """

    def write(tmp: Path) -> None:
        # Closed only when complete: after a failed write (a full disk) h5py's close fails too, and the objects that
        # the error's traceback still holds then crash the interpreter when freed; they close the file when they
        # are collected, the unfinished file already removed (atomic_write_sha256).
        f = h5py.File(tmp, "w")
        valid = _stream(f, year, blocks, subsample, missing)
        if valid is not None:
            shards.add_valid(f, valid)
        f.close()

    return atomic_write_sha256(path, write, sync_dir=False, publisher=publisher)


def _stream(
    f: h5py.File,
    year: Year,
    blocks: Iterator[tuple[int, np.ndarray] | object],
    subsample: int,
    missing: Mapping[str, str],
) -> np.ndarray | None:
    """`write_year`'s shard into the open file ``f``; the points that count where values were filled (None: nothing
    was missing)."""
    valid = None
    fields = shards.start_shard(f, year.times, year.meta)
    for c, (src, axes, _) in enumerate(year.variables):
        how = masks.policy(missing, src.name)
        channel = iter(blocks.__next__, END)
        for lo, block in channel:
            bad = ~np.isfinite(block)
            if bad.any():
                counted = _complete(block, bad, src, axes, year, how, subsample, lo, channel)
                valid = np.ones(year.meta.shape, dtype=bool) if valid is None else valid
                valid[c] &= counted
            fields[lo : lo + block.shape[0], c] = block
    return valid


END = object()  # `reading`'s mark after the last block of a channel's year


def reading(years: Iterable[Callable[[], Year]], subsample: int) -> Iterator[Year | tuple[int, np.ndarray] | object]:
    """Each year, opened here (``years``: the functions that open them, `open_year`), then its channels' blocks in
    turn, each channel's last followed by ``END``: what `write_year` consumes, read on another thread by
    `ahead.Ahead` while `_write` writes the shards."""
    for opening in years:
        year = opening()
        yield year
        for _, _, parts in year.variables:
            yield from _blocks(parts, subsample)
            yield END


# Source values read (and decoded) at a time: at most 4 MiB and a quarter of the variable's year, but at least 1 MiB
# (a small year, e.g. twelve monthly means, is read in one go: a read has a cost of its own).
_BLOCK_BYTES, _BLOCKS, _MIN_BLOCK_BYTES = 4 << 20, 4, 1 << 20


def _blocks(parts: list[xr.DataArray], subsample: int) -> Iterator[tuple[int, np.ndarray]]:
    """The parts (time, lat, lon) of a variable's year, possibly not read yet, as float32 blocks of times (the
    first time's index in the year, the block), each a new array: the year is never held whole, and never as read
    and as decoded beside its copy (xarray's masking and scaling makes one)."""
    done = 0
    for da in parts:
        frame = da.sizes["lat"] * da.sizes["lon"] * max(da.dtype.itemsize, 4)
        quarter = -(-da.sizes["time"] // _BLOCKS)
        step = max(1, min(_BLOCK_BYTES // frame, max(quarter, _MIN_BLOCK_BYTES // frame)))
        shape = (len(range(0, da.sizes["lat"], subsample)), len(range(0, da.sizes["lon"], subsample)))
        for lo in range(0, da.sizes["time"], step):
            values = da[lo : lo + step].values
            if subsample == 1 and values.dtype == np.float32 and values.flags.owndata and values.flags.c_contiguous:
                yield done + lo, values  # read into an array of its own: the block as it is
                continue
            block = np.empty((values.shape[0], *shape), dtype=np.float32)
            block[...] = values[:, ::subsample, ::subsample]  # strided reads are slow in netCDF-C
            del values
            yield done + lo, block
        done += da.sizes["time"]


def _complete(
    block: np.ndarray,
    bad: np.ndarray,
    src: VariableSource,
    axes: _Axes,
    year: Year,
    how: str | float,
    subsample: int,
    lo: int,
    rest: Iterator[tuple[int, np.ndarray]],
) -> np.ndarray:
    """Missing values ``bad`` (NaN after xarray applied the file's _FillValue/missing_value, or inf) in the block of
    one variable's year that starts at time ``lo`` (as written: after ``subsample``): filled in place under a fill
    policy, returning the points that count; refused under the policy ``error``, naming the source, the variable,
    how many there are in the year (``rest``, the year's blocks after this one, is read to count them) and where
    the first is."""
    where = f"{axes.files}: variable {src.var!r} ({src.name}) in {year.year}"
    if how != "error":
        return masks.fill(block, how, bad, where, axes.times[lo : lo + block.shape[0]])
    t, i, j = np.argwhere(bad)[0]
    count, frames = int(bad.sum()), int(bad.any(axis=(1, 2)).sum())
    for _, later_block in rest:  # earlier blocks had none
        later = ~np.isfinite(later_block)
        count, frames = count + int(later.sum()), frames + int(later.any(axis=(1, 2)).sum())
    raise UserError(
        f"{axes.files}: variable {src.var!r} ({src.name}) has {count} missing (NaN or inf) values in {year.year}, "
        f"in {frames} of {axes.times.size} frames, the first at {str(axes.times[lo + t])[:16]}, lat "
        f"{axes.lat[i * subsample]:g}, lon {axes.lon[j * subsample]:g}; nothing written. Set a fill policy, e.g. "
        f"data.missing: {{{src.name}: mean}} (or zero, or a value), to fill them and mask those points out of the "
        f"statistics, the loss and the metrics; or fill them in the source (xarray: ds[{src.var!r}].fillna(value) or "
        f".interpolate_na('time')), or leave {src.name!r} out of model.variables"
    )


def _same_axes(a: _Axes, b: _Axes, year: int) -> None:
    where = f"{b.files} ({b.name!r}) and {a.files} ({a.name!r})"
    ta, tb = a.times, b.times
    if ta.shape != tb.shape or not np.array_equal(ta, tb):
        n = min(ta.size, tb.size)
        diff = np.flatnonzero(ta[:n] != tb[:n])
        detail = f"first difference at {tb[diff[0]]} vs {ta[diff[0]]}" if diff.size else f"{tb.size} vs {ta.size} times"
        raise UserError(f"{where} do not share the time axis in {year} ({detail}); all variables need the same times")
    if a.calendar != b.calendar:
        raise UserError(
            f"{where} use different calendars ({b.calendar} and {a.calendar}); convert them to one calendar first"
        )
    for axis in ("lat", "lon"):
        va, vb = getattr(a, axis), getattr(b, axis)
        if va.shape != vb.shape or not np.allclose(va, vb):
            raise UserError(
                f"{where} are on different grids ({axis}: {vb.size} points [{vb[0]}..{vb[-1]}] vs {va.size} points "
                f"[{va[0]}..{va[-1]}]); regrid them to one grid first"
            )


def _mask(target: Path, channels: list[str], entries: list[dict]) -> dict | None:
    """The union of the shards' masks of filled points written as ``mask.h5`` and its index.json entry, or None
    (and no mask file) when no value was filled."""
    valid = masks.union([shards.shard_valid(target / e["file"]) for e in entries])
    if valid is None:
        (target / masks.MASK_NAME).unlink(missing_ok=True)
        return None
    return masks.write_mask(target, channels, valid)


CONVERTER = 1  # bump when a change here alters the shards written from the same files and settings


def settings(cfg: Config, sources: list[VariableSource], years: list[int]) -> dict:
    """What decides the shards' content besides the source files: index.json's ``conversion.settings``."""
    return {
        "converter": CONVERTER,
        "channels": [
            f"{s.name}={s.var} from {s.file_glob}" + (f" level {s.level}" if s.level >= 0 else "") for s in sources
        ],
        "years": years,
        "data.subsample": cfg.data.subsample,
        "data.allow_gaps": cfg.data.allow_gaps,
        **({"data.coords": dict(sorted(cfg.data.coords.items()))} if cfg.data.coords else {}),  # older records lack it
        **({"data.missing": dict(sorted(cfg.data.missing.items()))} if cfg.data.missing else {}),
    }


def _files_by_year(
    src: Path, sources: list[VariableSource], coords: Mapping[str, str], opened: OpenSources | None = None
) -> dict[str, dict[int, list[Path]]]:
    files: dict[str, dict[int, list[Path]]] = {}
    for s in sources:
        by_year: dict[int, list[Path]] = {}
        for path in find_files(src, s.file_glob):
            for y in file_years(path, coords, opened):
                by_year.setdefault(y, []).append(path)
        files[s.name] = by_year
    return files


@dataclass(frozen=True)
class Plan:
    """Rank 0's decision, shared by every rank: where to write (``out``, or a rebuild beside it), the old index
    entries a re-run may keep, lines for the user, and whether the kept index still lacks the conversion record."""

    target: Path
    previous: list[dict]
    notes: list[str]
    add_record: bool = False


def _plan(out: Path, job: Inputs, force: bool) -> Plan:
    """Raises ConversionChanged when ``out`` holds shards of another conversion and ``force`` is off."""
    notes = reconvert.clean_stale(out)
    if not (out / shards.INDEX_NAME).exists():
        out.mkdir(parents=True, exist_ok=True)
        dropped = reconvert.drop_stats(out, STATS_NAME)  # computed from shards nobody can vouch for
        return Plan(out, [], notes + ([dropped] if dropped else []))
    try:
        index = shards.read_index(out)
    except shards.ShardError as err:
        lines = [f"its index.json cannot be read ({err})"]
    else:
        if "conversion" not in index and reconvert.adoptable(index, [s.name for s in job.sources], job.years):
            note = f"{out}/index.json has no record of its sources (older met2net): keeping its valid shards as "
            note += "before and recording the current sources; use --force if the shards came from other files"
            return Plan(out, index["shards"], [*notes, note], add_record=True)
        lines = reconvert.changes(index.get("conversion"), job.record)
        if not lines:  # the same sources; a record that differs in what decides nothing (new times, hashes) is renewed
            return Plan(out, index["shards"], notes, add_record=reconvert.renewable(index["conversion"], job.record))
    if not force:
        raise reconvert.refusal(out, lines)
    target = reconvert.rebuild_dir(out)
    return Plan(target, [], [*notes, f"--force: building the new set in {target}, replacing {out} when complete"])


def _agreed(comm: Comm | None, decide: Callable[[], Plan]) -> Plan:
    """``decide()`` on rank 0, its result (or its error, raised) on every rank."""
    if comm is None:
        return decide()
    result = None
    if comm.Get_rank() == 0:
        try:
            result = decide()
        except Exception as err:
            result = err
    result = comm.bcast(result, root=0)
    if isinstance(result, Exception):
        raise result
    return result


@dataclass(frozen=True)
class Inputs:
    """What one conversion reads: the source root, the years, each channel's source and files by year, and the
    record of them all that index.json keeps."""

    src: Path
    years: list[int]
    sources: list[VariableSource]
    files: dict[str, dict[int, list[Path]]]
    record: dict


def inputs(src: Path, cfg: Config, opened: OpenSources | None = None, hashes: bool = False) -> Inputs:
    """``hashes``: record each source's sha256 (``data convert --hash``)."""
    years = sorted(set(cfg.data.train_years) | set(cfg.data.val_years) | set(cfg.data.test_years))
    sources = variable_sources(cfg)
    files = _files_by_year(src, sources, cfg.data.coords, opened)
    used = [p for s in sources for y in years for p in files[s.name].get(y, [])]
    return Inputs(src, years, sources, files, reconvert.record(settings(cfg, sources, years), src, used, hashes))


def convert(
    src: str | Path,
    cfg: Config,
    out: str | Path,
    comm: Comm | None = None,
    progress: bool = True,
    force: bool = False,
    hashes: bool = False,
) -> Path:
    """Write one shard per configured year under ``out`` and then ``index.json``; with ``force``, replace a set
    converted from other sources or settings (see met2net/data/reconvert.py); with ``hashes``, record (and compare)
    the sources' sha256, so a source copied or touched with the same content is still the same source."""
    out = Path(out)
    with OpenSources(cfg.data.coords) as opened:  # each source opened once, for its years and then its data
        return _convert(Path(src), cfg, out, comm, progress, force, opened, hashes)


def _convert(
    src: Path,
    cfg: Config,
    out: Path,
    comm: Comm | None,
    progress: bool,
    force: bool,
    opened: OpenSources,
    hashes: bool,
) -> Path:
    job = inputs(src, cfg, opened, hashes and (comm is None or comm.Get_rank() == 0))
    lock = reconvert.ConvertLock(out) if comm is None or comm.Get_rank() == 0 else None

    def decide() -> Plan:
        lock.acquire()  # before anything in or beside ``out`` is read or removed
        return _plan(out, job, force)

    try:
        plan = _agreed(comm, decide)
        for note in plan.notes:
            print(f"met2net data convert: {note}", file=sys.stderr, flush=True)
        try:
            return _write(job, cfg, plan, out, comm, progress, opened)
        except BaseException:
            if plan.target != out and comm is None:  # under MPI other ranks may still write: the next run cleans up
                shutil.rmtree(plan.target, ignore_errors=True)
            raise
    finally:
        if lock is not None:
            lock.release()


def _write(
    job: Inputs, cfg: Config, plan: Plan, out: Path, comm: Comm | None, progress: bool, opened: OpenSources
) -> Path:
    """This rank's years into the plan's target, then (rank 0) the index and, for a rebuild, the swap into ``out``."""
    target = plan.target
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    mine = [y for i, y in enumerate(job.years) if i % size == rank]
    names = {f"{y}.h5" for y in mine}
    reusable = {e["file"]: e for e in plan.previous if e["file"] in names and shards.shard_is_valid(target, e)}
    entries, steps, meta = [], set(), None
    d = cfg.data
    fresh = [y for y in mine if f"{y}.h5" not in reusable]
    opening = [
        functools.partial(open_year, y, job.sources, job.files, d.subsample, d.allow_gaps, d.coords, opened)
        for y in fresh
    ]
    # the sources are read on another thread while the shards are written here (unless netCDF4 and h5py share an
    # HDF5 library that is not thread-safe); shard N is hashed, flushed and renamed on a third while N + 1 is written
    threaded = hdf5_from_two_threads_is_safe()
    with Publisher() as publisher, Ahead(reading(opening, d.subsample), threaded=threaded) as items:
        for year in tqdm(mine, desc=f"shards (rank {rank})", disable=not progress or None, unit="year"):
            name = f"{year}.h5"
            if name in reusable:
                entries.append(reusable[name])
                continue
            data = next(items)
            sha = write_year(target / name, data, items, d.subsample, d.missing, publisher)
            entries.append((target / name, data.times, sha))  # its sha256 is taken on the publisher's thread
            print(f"rank {rank}/{size}: wrote {target / name} ({data.times.size} frames)", file=sys.stderr, flush=True)
            steps.update([data.step] if data.step else [])
            meta = data.meta
            del data
    entries = [e if isinstance(e, dict) else shards.shard_entry(e[0], e[1], e[2].result()) for e in entries]
    if meta is not None:  # each shard's data was flushed before its rename; the renames, once, before the index
        fsync(target)
    if comm is not None:
        gathered = comm.gather((entries, steps, meta), root=0)
        if rank != 0:
            comm.barrier()
            return out / shards.INDEX_NAME
        entries = [e for part in gathered for e in part[0]]
        steps = set().union(*(part[1] for part in gathered))
        meta = next((part[2] for part in gathered if part[2] is not None), None)
    if meta is None and plan.add_record:  # every shard was kept: the index gains the record, nothing else
        index = shards.read_index(out)
        meta_, step_ = shards.ShardMeta.from_json(index), TimeStep.of_index(index)
        shards.write_index(out, meta_, step_, entries, job.record, index.get("mask"))
    if meta is not None:  # else every shard was reused: keep the index as it is
        if len(steps) > 1:
            found = ", ".join(sorted(str(s) for s in steps))
            raise UserError(f"{job.src}: years have different time steps ({found}); use one time step")
        step = steps.pop() if steps else TimeStep.of_index(shards.read_index(target))
        mask = _mask(target, meta.channels, entries)
        shards.write_index(target, meta, step, entries, job.record, mask)
        if target != out:
            had_stats = (out / STATS_NAME).exists()
            reconvert.swap_in(target, out)
            gone = f"; its {STATS_NAME} went with the old shards, re-run met2net data stats" if had_stats else ""
            print(f"met2net data convert: replaced the shards in {out}{gone}", file=sys.stderr, flush=True)
    if comm is not None:
        comm.barrier()
    return out / shards.INDEX_NAME
