"""Per-channel statistics as mergeable (count, mean, M2) states, and ``met2net data stats``.

Chan et al.'s pairwise update: one pass over any partition of the data (files, ranks,
chunks) merges to the same mean and variance as one pass over all of it.

Normalisation uses the training years only, so validation and test frames never leak into
the model's inputs. Under MPI the work is split by shard (rank r reads shards i with
i % size == r; with fewer shards than ranks some ranks are idle). Each shard's state is
computed the same way on any rank and the states are merged in shard order, so ``stats.json``
is bit-for-bit the same on one process or many.

    mpirun -n 4 python -m met2net.data.stats SHARDS --train-years 2010-2015
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from met2net.data.atomic import atomic_write
from met2net.data.masks import read_mask
from met2net.data.shards import ShardError, iso, read_index
from met2net.errors import UserError

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

STATS_NAME = "stats.json"
STATS_FORMAT = 1
DEBUG_ENV = "MET2NET_STATS_DEBUG"
_FIELDS = ("count", "mean", "m2", "min", "max")
Period = tuple[np.datetime64, np.datetime64] | None  # [start, end) datetime64[h]: a split given as a date range
_RELAYED = {c.__name__: c for c in (ShardError, UserError, ValueError, FileNotFoundError, OSError)}


@dataclass
class Moments:
    count: np.ndarray  # (C,) float64
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> Moments:
        z = np.zeros(channels)
        return cls(z.copy(), z.copy(), z.copy(), np.full(channels, np.inf), np.full(channels, -np.inf))

    @classmethod
    def of(cls, data: np.ndarray, channel_axis: int = 1) -> Moments:
        """Moments of one chunk, per channel along ``channel_axis``."""
        x = np.moveaxis(np.asarray(data, dtype=np.float64), channel_axis, 0).reshape(data.shape[channel_axis], -1)
        mean = x.mean(axis=1)
        return cls(
            np.full(x.shape[0], float(x.shape[1])),
            mean,
            ((x - mean[:, None]) ** 2).sum(axis=1),
            x.min(axis=1),
            x.max(axis=1),
        )

    @classmethod
    def of_valid(cls, data: np.ndarray, valid: np.ndarray) -> Moments:
        """Moments of one (time, channel, lat, lon) chunk over the points ``valid`` ((channel, lat, lon) bool) only:
        the points a missing-value policy filled count nowhere (met2net/data/masks.py)."""
        parts = []
        for c in range(data.shape[1]):
            x = np.asarray(data[:, c][:, valid[c]], dtype=np.float64).reshape(1, -1)
            parts.append(cls.of(x, channel_axis=0) if x.size else cls.empty(1))
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in _FIELDS))

    def merge(self, other: Moments) -> Moments:
        """Combined state; the weight is formed first so an empty side leaves the other exactly unchanged."""
        n = self.count + other.count
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / safe)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / safe)
        return Moments(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @classmethod
    def merge_all(cls, parts: list[Moments], channels: int | None = None) -> Moments:
        """Merge left to right (a fixed order, so the result is reproducible); ``channels`` sizes an empty list."""
        if not parts:
            if channels is None:
                raise ValueError("Moments.merge_all: got no states and no channel count")
            return cls.empty(channels)
        return reduce(cls.merge, parts)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1.0))

    def to_json(self) -> dict:
        """Plain lists of floats; ``repr`` of a float64 round-trips exactly through JSON."""
        return {k: [float(v) for v in getattr(self, k)] for k in _FIELDS}

    @classmethod
    def from_json(cls, d: dict) -> Moments:
        return cls(*(np.asarray(d[k], dtype=np.float64) for k in _FIELDS))


def allreduce_moments(local: Moments, comm: Comm) -> Moments:
    """Every rank's state merged in rank order, so all ranks hold the identical result."""
    return Moments.merge_all([Moments.from_json(d) for d in comm.allgather(local.to_json())])


# -- reading shards -------------------------------------------------------------------------------------------------


def _years_of(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[Y]").astype(np.int64) + 1970


def _check_finite(name: str, block: np.ndarray, times: np.ndarray, channels: list[str]) -> None:
    """Refuse NaN/inf (the writer does too, so one here means a damaged or foreign file), naming where it is."""
    bad = ~np.isfinite(block).all(axis=(2, 3))
    if bad.any():
        t, c = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(block[t, c]).any() else "inf"
        raise ShardError(
            f"{name}: channel '{channels[c]}' has {kind} values at {iso(times[t])} "
            "(first non-finite value); re-run met2net data convert"
        )


def _file_moments(
    path: Path,
    years: np.ndarray,
    channels: list[str],
    chunk_frames: int,
    period: Period,
    valid: np.ndarray | None = None,
) -> Moments:
    """One shard's state: its frames of ``years`` (inside ``period`` if given) read ``chunk_frames`` at a time,
    merged in time order; with ``valid`` (the directory's mask), over its points only."""
    out = Moments.empty(len(channels))
    with h5py.File(path, "r") as f:
        fields = f["fields"]
        if fields.ndim != 4 or fields.shape[1] != len(channels):
            raise ShardError(
                f"{path.name}: fields {fields.shape} do not match the {len(channels)} channels of "
                "index.json; re-run met2net data convert"
            )
        times = f["time"][()].astype("datetime64[h]")
        keep = np.isin(_years_of(times), years)
        if period is not None:
            keep &= (times >= period[0]) & (times < period[1])
        for start in range(0, times.size, chunk_frames):
            sel = np.flatnonzero(keep[start : start + chunk_frames])
            if sel.size == 0:
                continue
            lo, hi = start + sel[0], start + sel[-1] + 1
            block = fields[lo:hi][sel - sel[0]]
            _check_finite(path.name, block, times[start + sel], channels)
            out = out.merge(Moments.of(block) if valid is None else Moments.of_valid(block, valid))
    return out


def shard_moments(
    directory: str | Path, files: list[str], years: list[int], chunk_frames: int = 512, period: Period = None
) -> Moments:
    """Moments of the frames of ``years`` (and inside ``period``: [start, end) datetime64[h], if given) in the given
    shard files of ``directory``, merged in file order."""
    directory = Path(directory)
    index = read_index(directory)
    channels = [str(c) for c in index["channels"]]
    valid = read_mask(directory, index)
    wanted = np.asarray(sorted(set(years)), dtype=np.int64)
    parts = [_file_moments(directory / name, wanted, channels, int(chunk_frames), period, valid) for name in files]
    return Moments.merge_all(parts, len(channels))


# -- computing over ranks -------------------------------------------------------------------------------------------


def _overlapping(index: dict, years: list[int]) -> list[str]:
    """Shard files whose time range touches any of ``years`` (frames are filtered exactly when read)."""
    wanted = set(years)
    return [
        e["file"] for e in index["shards"] if wanted & set(range(int(e["first_time"][:4]), int(e["last_time"][:4]) + 1))
    ]


def _gather(comm: Comm | None, compute: Callable[[], Moments]) -> Moments:
    """``compute()`` on this rank, allgathered; a failure on any rank raises on every rank instead of deadlocking."""
    try:
        mine, error = compute(), None
    except Exception as e:  # every rank must still reach the collective below
        mine, error = None, e
    gathered = comm.allgather((mine, None if error is None else (type(error).__name__, str(error))))
    if error is not None:
        raise error
    for rank, (_, err) in enumerate(gathered):
        if err is not None:
            raise _RELAYED.get(err[0], RuntimeError)(f"rank {rank}: {err[1]}")
    return [part for part, _ in gathered]


def _debug(rank: int, size: int, files: list[str], states: dict[int, dict]) -> None:
    """With MET2NET_STATS_DEBUG set, say what this rank read, so a launch can be checked to really split the work."""
    if os.environ.get(DEBUG_ENV):
        values = int(sum(s["count"][0] for s in states.values()))
        print(
            f"stats rank {rank}/{size}: shards {','.join(files) or '-'} values/channel {values}",
            file=sys.stderr,
            flush=True,
        )


def compute_stats(
    directory: str | Path, train_years: list[int], comm: Comm | None = None, period: Period = None
) -> Moments:
    """Moments of every frame of ``train_years`` (inside ``period``, a training split given as a date range, if
    given); with ``comm``, split by shard across its ranks.

    Per-shard states are merged in shard order on every rank, so the result does not depend on the rank count.
    """
    directory = Path(directory)
    index = read_index(directory)
    files = _overlapping(index, train_years)
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    mine = list(range(rank, len(files), size))

    def compute() -> dict[int, dict]:
        return {i: shard_moments(directory, [files[i]], train_years, period=period).to_json() for i in mine}

    if size > 1:
        states = {i: s for part in _gather(comm, compute) for i, s in part.items()}
    else:
        states = compute()
    _debug(rank, size, [files[i] for i in mine], {i: states[i] for i in mine})
    total = Moments.merge_all([Moments.from_json(states[i]) for i in sorted(states)], len(index["channels"]))
    if not total.count.any():
        raise UserError(
            f"no frame of the training years {sorted(set(train_years))}{_within(period)} in {directory} "
            f"(its shards cover {_coverage(index)}); give training years inside that span, or convert those years"
        )
    return total


def _within(period: Period) -> str:
    return "" if period is None else f" within {period[0]} .. {period[1] - 1}"


def _coverage(index: dict) -> str:
    shards = index["shards"]
    return f"{shards[0]['first_time']} .. {shards[-1]['last_time']}" if shards else "nothing"


# -- stats.json -----------------------------------------------------------------------------------------------------


def write_stats(
    directory: str | Path,
    moments: Moments,
    channels: list[str],
    train_years: list[int],
    train_period: list[str] | None = None,
) -> Path:
    """Write ``stats.json`` beside index.json atomically; ``state`` keeps the mergeable form for later updates;
    ``train_period``: the training split's date range as the config gives it (``data.train``), if it is one."""
    if len(channels) != moments.count.size:
        raise ValueError(f"write_stats: {len(channels)} channel names for {moments.count.size} channels")
    doc = {
        "format": STATS_FORMAT,
        "channels": list(channels),
        "train_years": sorted(set(int(y) for y in train_years)),
        **({"train_period": list(train_period)} if train_period else {}),
        "mean": moments.mean.tolist(),
        "std": moments.std.tolist(),
        "min": moments.min.tolist(),
        "max": moments.max.tolist(),
        "count": [int(c) for c in moments.count],
        "state": moments.to_json(),
    }
    path = Path(directory) / STATS_NAME
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n"))


def read_stats(directory: str | Path) -> dict:
    path = Path(directory) / STATS_NAME
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; run met2net data stats on the shard directory first") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-run met2net data stats") from None
    missing = [k for k in ("channels", "train_years", "mean", "std") if not isinstance(stats, dict) or k not in stats]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; re-run met2net data stats")
    return stats


# -- command line ---------------------------------------------------------------------------------------------------


def parse_years(text: str) -> list[int]:
    """``2010-2015`` or ``2010,2012`` (or a mix) → a sorted list of years."""
    years: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            years.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected years like 2010-2015 or 2010,2012, got {text!r}") from None
    if not years:
        raise argparse.ArgumentTypeError(f"no years in {text!r}")
    return sorted(years)


def table(moments: Moments, channels: list[str]) -> str:
    rows = [f"{'channel':<12} {'mean':>12} {'std':>12} {'min':>12} {'max':>12}"]
    rows += [
        f"{c:<12} {m:12.5g} {s:12.5g} {lo:12.5g} {hi:12.5g}"
        for c, m, s, lo, hi in zip(channels, moments.mean, moments.std, moments.min, moments.max)
    ]
    return "\n".join(rows)
