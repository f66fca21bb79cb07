"""HDF5 shard format: writer, index, reader and verification.

Training reads fixed-size windows of frames at random positions, so the converted data lives in a few
large HDF5 files laid out for cheap random access by time, plus a small JSON index that says what is
where and lets a re-run or a reader check every file against a checksum.

Format version 1
----------------

A shard directory holds ``index.json`` and shard files ``<name>.h5`` (typically one per year, e.g.
``2010.h5``).

Each shard file holds:

* ``fields``: float32, shape ``(time, channel, lat, lon)``, stored contiguously and uncompressed, so
  readers memory-map it (random 24-frame windows: ~11,000/s against ~3,000/s through h5py here); with
  compression it is chunked by frame (``(1, C, H, W)``) and read through h5py;
* ``time``: int64, hours since 1970-01-01T00:00, strictly increasing;
* ``lat``: float64, ascending (south → north); ``lon``: float64, ascending, in [0, 360);
* file attributes: ``format`` = 1, ``channels`` (short names, e.g. ``t2m``), ``units``, ``long_names``,
  ``levels`` (pressure level in hPa, -1 for single-level fields), one entry per channel.

No value in ``fields`` is NaN or infinite: the writer refuses such data. A shard whose missing values were filled
(``data.missing``, met2net/data/masks.py) also holds ``valid``: uint8, ``(channel, lat, lon)``, 1 where a point
counts, and the directory a ``mask.h5`` (their union) that index.json's ``mask`` names with its checksum.

``index.json``::

    {"format": 1, "channels": [...], "units": [...], "long_names": [...], "levels": [...],
     "lat": [...], "lon": [...], "time_step_hours": int,  # or "time_step_months": int for monthly data
     "calendar": "noleap",  # only for another calendar than the standard one (met2net/data/calendars.py)
     "shards": [{"file": "2010.h5", "first_time": "2010-01-01T00:00", "last_time": "2010-12-31T23:00",
                 "num_times": 8760, "sha256": "<hex>"}, ...],
     "conversion": {"settings": {...}, "root": "/data/era5", "sources": [{"path": "...", "size": int,
                                                                          "mtime_ns": int}, ...]}}

``shards`` is sorted by ``first_time``; shard time ranges do not overlap. Times are ISO 8601 to the minute.
``conversion`` (written by ``met2net data convert``, absent from hand-made directories) is what the shards were
converted from: the settings that decide their content and every source file's path (relative to ``root``), size
and modification time; a re-run compares it with its own and refuses a difference unless ``--force``.

Every file is written atomically (a hidden temporary file in the same directory, flushed, then renamed), and the
index only after the shards it lists, so a crash never leaves a file that looks complete but is not.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from met2net.data.atomic import Publisher, atomic_write, atomic_write_sha256, sha256_file
from met2net.data.timestep import TimeStep
from met2net.errors import UserError

FORMAT = 1
INDEX_NAME = "index.json"
TIME_UNITS = "hours since 1970-01-01T00:00"
_FIX = "re-run met2net data convert"
_FINITE_BLOCK = 256  # frames per NaN/inf check: bounds the temporary mask's memory


class ShardError(UserError):
    """A shard directory or file is missing, inconsistent, corrupt, or would hold invalid data."""


@dataclass(frozen=True, eq=False)
class ShardMeta:
    """What every shard of a directory shares: channel descriptions and the grid.

    ``eq=False`` because fields hold arrays; lat/lon are stored read-only so the instance stays immutable.
    """

    channels: list[str]
    units: list[str]
    long_names: list[str]
    levels: list[int]
    lat: np.ndarray
    lon: np.ndarray

    def __post_init__(self):
        n = len(self.channels)
        for name in ("units", "long_names", "levels"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"ShardMeta.{name}: expected {n} entries (one per channel), got {len(getattr(self, name))}"
                )
        if n == 0:
            raise ValueError("ShardMeta.channels: expected at least one channel")
        set_ = object.__setattr__
        set_(self, "channels", [str(c) for c in self.channels])
        set_(self, "units", [str(u) for u in self.units])
        set_(self, "long_names", [str(s) for s in self.long_names])
        set_(self, "levels", [-1 if lev is None else int(lev) for lev in self.levels])
        set_(self, "lat", _axis("lat", self.lat))
        set_(self, "lon", _axis("lon", self.lon))
        if self.lon[0] < 0 or self.lon[-1] >= 360:
            raise ValueError(f"ShardMeta.lon: expected values in [0, 360), got [{self.lon[0]}, {self.lon[-1]}]")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channel, lat, lon) of one frame."""
        return len(self.channels), len(self.lat), len(self.lon)

    def to_json(self) -> dict:
        return {
            "channels": self.channels,
            "units": self.units,
            "long_names": self.long_names,
            "levels": self.levels,
            "lat": self.lat.tolist(),
            "lon": self.lon.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> ShardMeta:
        return cls(d["channels"], d["units"], d["long_names"], d["levels"], np.asarray(d["lat"]), np.asarray(d["lon"]))


def _axis(name: str, values: np.ndarray) -> np.ndarray:
    a = np.array(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"ShardMeta.{name}: expected a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
        raise ValueError(f"ShardMeta.{name}: expected finite, strictly ascending values")
    a.flags.writeable = False
    return a


def iso(t: np.datetime64) -> str:
    """ISO 8601 to the minute, the time format of index.json and of error messages."""
    return str(np.datetime_as_string(np.datetime64(t, "m")))


def shard_entry(path: Path, times: np.ndarray, sha256: str) -> dict:
    """The index.json entry for a shard just written by :func:`write_shard`."""
    times = _hours(times)
    return {
        "file": Path(path).name,
        "first_time": iso(times[0]),
        "last_time": iso(times[-1]),
        "num_times": int(times.size),
        "sha256": sha256,
    }


# -- writing --------------------------------------------------------------------------------------------------------


def _hours(times: np.ndarray) -> np.ndarray:
    """Validated ``datetime64[h]`` copy of ``times``; sub-hour precision would be lost silently otherwise."""
    t = np.asarray(times)
    if t.ndim != 1 or t.size == 0 or not np.issubdtype(t.dtype, np.datetime64):
        raise ValueError(f"times: expected a non-empty 1-D datetime64 array, got dtype {t.dtype} shape {t.shape}")
    h = t.astype("datetime64[h]")
    if np.any(np.isnat(h)) or np.any(h != t):
        raise ValueError("times: expected whole hours (no NaT, no minutes or seconds)")
    if np.any(np.diff(h) <= np.timedelta64(0, "h")):
        raise ValueError("times: expected strictly increasing times")
    return h


def _check_fields(fields: np.ndarray, times: np.ndarray, meta: ShardMeta) -> np.ndarray:
    f = np.asarray(fields)
    if not np.issubdtype(f.dtype, np.floating):
        raise ValueError(f"fields: expected a float32 array, got dtype {f.dtype}")
    want = (times.size, *meta.shape)
    if f.shape != want:
        raise ValueError(
            f"fields: expected shape (time, channel, lat, lon) = {want} to match times and meta, got {f.shape}"
        )
    return np.ascontiguousarray(f, dtype=np.float32)


def _check_finite(path: Path, fields: np.ndarray, times: np.ndarray, meta: ShardMeta) -> None:
    """Reject NaN/inf before anything is written, naming where the first bad value is so it can be traced."""
    for start in range(0, fields.shape[0], _FINITE_BLOCK):
        block = fields[start : start + _FINITE_BLOCK]
        bad = ~np.isfinite(block).all(axis=(2, 3))
        if bad.any():
            t, c = np.argwhere(bad)[0]
            kind = "NaN" if np.isnan(block[t, c]).any() else "inf"
            raise ShardError(
                f"{path.name}: channel '{meta.channels[c]}' has {kind} values at "
                f"{iso(times[start + t])} (first non-finite value); nothing written. "
                "Fix or mask the source data, then re-run met2net data convert."
            )


def start_shard(f: h5py.File, times: np.ndarray, meta: ShardMeta, compression: str | None = None) -> h5py.Dataset:
    """A new shard's attributes and coordinates in ``f`` and its ``fields`` dataset, allocated but not written yet:
    the caller fills it (whole, `write_shard`; or a block of times and one channel at a time, as
    met2net/data/convert.py streams a year from its sources) and answers for the values being finite. ``times``:
    datetime64, whole hours, strictly increasing."""
    times = _hours(times)
    f.attrs["format"] = FORMAT
    f.attrs["channels"] = meta.channels
    f.attrs["units"] = meta.units
    f.attrs["long_names"] = meta.long_names
    f.attrs["levels"] = np.asarray(meta.levels, dtype=np.int64)
    chunks = (1, *meta.shape) if compression else None  # contiguous: readers memory-map it
    fields = f.create_dataset(
        "fields", shape=(times.size, *meta.shape), dtype=np.float32, chunks=chunks, compression=compression
    )
    f.create_dataset("time", data=times.astype(np.int64)).attrs["units"] = TIME_UNITS
    f.create_dataset("lat", data=meta.lat).attrs["units"] = "degrees_north"
    f.create_dataset("lon", data=meta.lon).attrs["units"] = "degrees_east"
    return fields


def add_valid(f: h5py.File, valid: np.ndarray) -> None:
    """The points that count of a shard whose missing values were filled (met2net/data/masks.py)."""
    f.create_dataset("valid", data=np.asarray(valid, dtype=np.uint8))


def _fill(
    f: h5py.File,
    times: np.ndarray,
    fields: np.ndarray,
    meta: ShardMeta,
    compression: str | None,
    valid: np.ndarray | None = None,
) -> None:
    start_shard(f, times, meta, compression)[...] = fields
    if valid is not None:
        add_valid(f, valid)


def write_shard(
    path: Path,
    times: np.ndarray,
    fields: np.ndarray,
    meta: ShardMeta,
    *,
    compression: str | None = None,
    valid: np.ndarray | None = None,
    sync_dir: bool = True,
    publisher: Publisher | None = None,
) -> str | Future[str]:
    """Write one shard atomically and return its sha256 (for the index), or with a ``publisher`` a future of it.

    ``times``: datetime64, whole hours, strictly increasing; ``fields``: (time, channel, lat, lon); ``valid``:
    (channel, lat, lon), the points that count where values were filled (met2net/data/masks.py); ``sync_dir=False``:
    the caller fsyncs the directory once after its shards, before the index that lists them (`atomic_write`);
    ``publisher``: the shard is hashed, flushed and renamed into place on its thread (`atomic.Publisher`).
    """
    path = Path(path)
    times = _hours(times)
    fields = _check_fields(fields, times, meta)
    _check_finite(path, fields, times, meta)
    if valid is not None and np.shape(valid) != meta.shape:
        raise ValueError(f"valid: expected shape (channel, lat, lon) = {meta.shape}, got {np.shape(valid)}")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _fill(f, times, fields, meta, compression, valid)

    return atomic_write_sha256(path, write, sync_dir=sync_dir, publisher=publisher)


# -- index ----------------------------------------------------------------------------------------------------------

_ENTRY_KEYS = ("file", "first_time", "last_time", "num_times", "sha256")


def _sorted_entries(directory: Path, entries: list[dict]) -> list[dict]:
    """Entries in time order, refusing missing shards and overlaps a reader could not serve unambiguously."""
    for e in entries:
        missing = [k for k in _ENTRY_KEYS if k not in e]
        if missing:
            raise ValueError(f"entries: expected keys {list(_ENTRY_KEYS)}, entry {e} lacks {missing}")
        if not (directory / e["file"]).is_file():
            raise ShardError(f"{e['file']}: listed in the index but not found in {directory}; write shards first")
    out = sorted(({k: e[k] for k in _ENTRY_KEYS} for e in entries), key=lambda e: np.datetime64(e["first_time"]))
    for a, b in zip(out, out[1:]):
        if np.datetime64(b["first_time"]) <= np.datetime64(a["last_time"]):
            raise ShardError(
                f"{a['file']} ({a['first_time']} .. {a['last_time']}) overlaps {b['file']} "
                f"({b['first_time']} .. {b['last_time']})"
            )
    return out


def write_index(
    directory: Path,
    meta: ShardMeta,
    time_step: int | TimeStep,
    entries: list[dict],
    conversion: dict | None = None,
    mask: dict | None = None,
) -> Path:
    """Write ``index.json`` atomically; call after every listed shard is written. ``time_step``: hours (an int) or
    a TimeStep (calendar months for monthly data). ``conversion``: what the shards were converted from (see
    met2net/data/reconvert.py), so a later run can tell whether they are still current; ``mask``: the entry of the
    mask file of points filled by a missing-value policy (met2net/data/masks.py), written before."""
    directory = Path(directory)
    if not isinstance(time_step, TimeStep):
        if int(time_step) <= 0:
            raise ValueError(f"time_step_hours: expected a positive integer, got {time_step}")
        time_step = TimeStep(int(time_step))
    index = {
        "format": FORMAT,
        **meta.to_json(),
        **time_step.index_entry(),
        "shards": _sorted_entries(directory, entries),
    }
    if conversion is not None:
        index["conversion"] = conversion
    if mask is not None:
        index["mask"] = mask
    path = directory / INDEX_NAME
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(index, indent=1) + "\n"))
    return path


def read_index(directory: Path) -> dict:
    path = Path(directory) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path}: not found; is this a shard directory? ({_FIX})") from None
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: not valid JSON ({err}); {_FIX}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise ShardError(f"{path}: format {found!r}, this version reads format {FORMAT}; {_FIX}")
    missing = [k for k in ("channels", "lat", "lon", "shards") if k not in index]
    if missing:
        raise ShardError(f"{path}: lacks {', '.join(missing)}; {_FIX}")
    return index


# -- verification ---------------------------------------------------------------------------------------------------


def _problem(directory: Path, entry: dict) -> str | None:
    path = directory / entry["file"]
    if not path.is_file():
        return f"{entry['file']}: missing"
    found = sha256_file(path)
    if found != entry["sha256"]:
        return (
            f"{entry['file']}: checksum mismatch (expected {entry['sha256'][:12]}..., found {found[:12]}...; "
            f"{path.stat().st_size} bytes; truncated or modified)"
        )
    return None


def verify_shards(directory: Path) -> None:
    """Check every shard listed in the index against its checksum; one error lists every bad file."""
    directory = Path(directory)
    problems = [p for e in read_index(directory)["shards"] if (p := _problem(directory, e))]
    if problems:
        raise ShardError(
            f"{directory}: {len(problems)} bad shard(s):\n  " + "\n  ".join(problems) + f"\n{_FIX} to rewrite them."
        )


def shard_valid(path: Path) -> np.ndarray | None:
    """A shard's ``valid`` mask ((channel, lat, lon) bool), or None when none of its points was filled."""
    with h5py.File(path, "r") as f:
        return f["valid"][()].astype(bool) if "valid" in f else None


def shard_is_valid(directory: Path, entry: dict) -> bool:
    """True if the entry's file exists with the recorded checksum, so a re-run can skip it."""
    return _problem(Path(directory), entry) is None


# -- reading --------------------------------------------------------------------------------------------------------


def _shard_times(path: Path, entry: dict, meta: ShardMeta) -> np.ndarray:
    """A shard's times, after checking it agrees with the index (catches a stale index cheaply)."""
    try:
        with h5py.File(path, "r") as f:
            times = f["time"][()].astype("datetime64[h]")
            shape = f["fields"].shape
            channels = [str(c) for c in f.attrs["channels"]]
    except (OSError, KeyError) as e:  # missing, truncated, not HDF5, not a shard
        raise ShardError(f"{path}: listed in index.json but not a readable shard ({e}); {_FIX}") from None
    if shape[1:] != meta.shape or channels != meta.channels:
        raise ShardError(
            f"{path.name}: fields {shape} / channels {channels} do not match index.json "
            f"({meta.shape}, {meta.channels}); {_FIX}"
        )
    if (
        times.size != entry["num_times"]
        or shape[0] != times.size
        or (times.size and (iso(times[0]), iso(times[-1])) != (entry["first_time"], entry["last_time"]))
    ):
        raise ShardError(f"{path}: times do not match index.json; {_FIX}")
    return times


class ShardReader:
    """Random access to frames by global index across all shards of a directory.

    h5py handles are opened on first use in each process and never shared across a fork (HDF5 would
    reuse an inherited handle's file descriptor), so one reader can be built in the parent and used by
    DataLoader workers, whether forked or unpickled.
    """

    def __init__(self, directory: Path, verify: bool = False):
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        if verify:
            verify_shards(self.directory)
        self.meta = ShardMeta.from_json(self.index)
        entries = self.index["shards"]
        self._paths = [self.directory / e["file"] for e in entries]
        parts = [_shard_times(p, e, self.meta) for p, e in zip(self._paths, entries)]
        self.times = np.concatenate(parts) if parts else np.empty(0, "datetime64[h]")
        if np.any(np.diff(self.times) <= np.timedelta64(0, "h")):
            raise ShardError(f"{self.directory}: shard times overlap or are out of order; {_FIX}")
        self._starts = np.cumsum([0] + [p.size for p in parts])
        self._handles: dict[int, h5py.File] = {}
        self._arrays: dict[int, np.ndarray | h5py.Dataset] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.times.size)

    def _dataset(self, i: int) -> h5py.Dataset:
        if self._pid != os.getpid():
            self.close()  # in a child, the parent's handles must go first or HDF5 hands back the same open file
        if i not in self._handles:
            self._handles[i] = h5py.File(self._paths[i], "r")
        return self._handles[i]["fields"]

    def _array(self, i: int) -> np.ndarray | h5py.Dataset:
        """Shard i's frames: a read-only memory map of the file when the dataset is stored contiguously and
        uncompressed (3-4× faster random window reads than h5py here), seen as a plain ndarray (np.memmap's
        Python-level indexing cost 7 µs per window), else the h5py dataset."""
        if self._pid != os.getpid():
            self.close()
        if i not in self._arrays:
            ds = self._dataset(i)
            offset = ds.id.get_offset()
            if ds.chunks is None and offset is not None:
                self._arrays[i] = np.memmap(self._paths[i], ds.dtype, "r", offset, ds.shape).view(np.ndarray)
            else:
                self._arrays[i] = ds
        return self._arrays[i]

    def read(self, start: int, length: int, step: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start, start+step, ...`` (``length`` of them) as (length, C, H, W) float32; may span shards."""
        if out is None:
            out = np.empty((int(length), *self.meta.shape), dtype=np.float32)
        for offset, count, source, rows in self.pieces(start, length, step):
            if isinstance(source, np.ndarray):
                out[offset : offset + count] = source[rows]
            else:
                source.read_direct(out, rows, np.s_[offset : offset + count])
        return out

    def pieces(self, start: int, length: int, step: int = 1) -> list[tuple[int, int, np.ndarray | h5py.Dataset, slice]]:
        """Where :meth:`read`'s frames are, so that a caller can transform them on the way without copying them
        first (the training windows normalise straight from the memory map): ``(offset, count, source, rows)``
        per piece, in order, frames ``offset .. offset + count - 1`` of the result being ``source[rows]``.

        A memory-mapped shard is one piece (``source[rows]`` a strided view). A compressed shard, read through
        h5py, is one piece per run of consecutive frames and, with ``step`` > 1, one per frame: h5py's strided
        selections are ~10× slower here (9 ms against 0.7 ms for 12 frames of 5×32×64).
        """
        start, length, step = int(start), int(length), int(step)
        last = start + (length - 1) * step
        if start < 0 or length < 0 or step < 1 or (length and last >= len(self)):
            raise IndexError(
                f"read(start={start}, length={length}, step={step}): expected 0 <= start, step >= 1 "
                f"the last frame inside the {len(self)} frames"
            )
        found, done = [], 0
        while done < length:
            pos = start + done * step
            i = int(np.searchsorted(self._starts, pos, side="right")) - 1
            local, end = pos - int(self._starts[i]), int(self._starts[i + 1])
            frames = self._array(i)
            if isinstance(frames, np.ndarray):
                n = min(length - done, (end - 1 - pos) // step + 1)
                found.append((done, n, frames, slice(local, local + (n - 1) * step + 1, step)))
            else:
                n = min(length - done, end - pos) if step == 1 else 1
                found.append((done, n, frames, slice(local, local + n)))
            done += n
        return found

    def close(self) -> None:
        """Close this process's handles (in a forked child: its copies of the parent's; read-only, so harmless)."""
        for f in self._handles.values():
            f.close()
        self._handles, self._arrays = {}, {}
        self._pid = os.getpid()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_arrays"] = {}, {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
