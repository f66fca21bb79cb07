"""Samples: windows of in_frames → out_frames consecutive frames that never cross a gap.

Shapes: a series is (N, C, H, W); a sample is x (T_in, C, H, W), y (T_out, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, get_worker_info

from met2net.data.shards import ShardReader
from met2net.data.timestep import TimeStep


def window_starts(times: np.ndarray, length: int, stride: int, step: np.timedelta64 | TimeStep) -> np.ndarray:
    """Start indices of windows of ``length`` frames spaced exactly ``step`` apart (a timedelta, or a TimeStep:
    hours or calendar months), every ``stride`` frames within each unbroken segment of ``times``."""
    if len(times) < length:
        return np.zeros(0, dtype=np.int64)
    consecutive = step.consecutive(times) if isinstance(step, TimeStep) else np.diff(times) == step
    breaks = np.flatnonzero(~consecutive) + 1
    starts = []
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(times)]):
        starts.append(np.arange(lo, hi - length + 1, stride, dtype=np.int64))
    return np.concatenate(starts)


class WindowDataset(Dataset):
    """Windows over an in-memory, already normalised series."""

    def __init__(self, series: np.ndarray, starts: np.ndarray, in_frames: int, out_frames: int):
        self.series = torch.from_numpy(np.ascontiguousarray(series, dtype=np.float32))
        self.starts = starts
        self.in_frames, self.out_frames = in_frames, out_frames

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One window, or a batch of them for a list of indices (see :func:`batch_loader`)."""
        offsets = torch.arange(self.in_frames + self.out_frames)
        if isinstance(i, (int, np.integer)):
            window = self.series[int(self.starts[i]) + offsets]
        else:
            window = self.series[torch.as_tensor(self.starts[np.asarray(i)])[:, None] + offsets]
        return window[..., : self.in_frames, :, :, :], window[..., self.in_frames :, :, :, :]


def _empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor; inside a DataLoader worker in shared memory, as default_collate does,
    so handing the batch to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape)
    storage = torch.empty(0)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0).new(storage).view(shape)


def batch_loader(
    dataset: Dataset, sampler: Sampler[int], batch_size: int, drop_last: bool, num_workers: int = 0
) -> DataLoader:
    """A DataLoader that asks the dataset for whole batches (a list of indices per call) instead of
    collating single windows: one allocation and one normalisation pass per batch."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=BatchSampler(sampler, batch_size, drop_last),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )  # new iterators draw nothing from the global RNG


def _frame_years(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[Y]").astype(np.int64) + 1970


def in_split(
    times: np.ndarray, years: Sequence[int], period: tuple[np.datetime64, np.datetime64] | None = None
) -> np.ndarray:
    """Which ``times`` (datetime64) belong to a split: those of ``years`` and, for a split given as a date range
    (``data.train`` ...: `DataConfig.period`), inside [start, end)."""
    keep = np.isin(_frame_years(times), np.asarray(list(years), dtype=np.int64))
    if period is not None:
        t = np.asarray(times).astype("datetime64[h]")
        keep &= (t >= period[0]) & (t < period[1])
    return keep


def _runs(frames: np.ndarray) -> list[tuple[int, int]]:
    """(first, length) of each run of consecutive frame indices, so a window costs as few reads as possible."""
    cuts = np.flatnonzero(np.diff(frames) != 1) + 1
    return [(int(run[0]), len(run)) for run in np.split(frames, cuts)]


def _spacing(frames: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Per window (of ``length`` frames from ``frames[start]``), the spacing of its frame indices when they are
    equally spaced (then it is read in one strided read), else 0: worked out once for all windows, not per window
    read (a tenth of the raw loader's time per batch went to the per-window check)."""
    gaps = np.diff(frames)
    if length < 2 or gaps.size == 0:
        return np.ones(len(starts), dtype=np.int64)
    changes = np.r_[0, np.cumsum(gaps[1:] != gaps[:-1])]  # changes[k]: spacing changes among gaps[0..k]
    last = starts + length - 2  # the window's last gap
    return np.where(changes[last] == changes[starts], gaps[starts], 0)


def window_step(base: TimeStep, step_hours: int, where: str | Path) -> TimeStep:
    """The step of the windows over shards whose own step is ``base``, for ``data.step_hours``."""
    if base.monthly:
        if step_hours != 1:
            raise ValueError(
                f"the shards in {where} are monthly (a frame every {base}): windows take every month; "
                f"data.step_hours {step_hours} applies to hourly data only, leave it at 1"
            )
        return base
    if step_hours % base.size:
        raise ValueError(f"step_hours {step_hours}: expected a multiple of the shards' time step ({base})")
    return TimeStep(step_hours, calendar=base.calendar)


class Normalise:
    """x ↦ (x − mean) / std per channel, on (…, C, H, W) batches wherever they are: the training loop on a GPU
    applies it there to the raw batches of a ``ShardWindowDataset(normalise=False)``, so the loader only copies (the
    normalisation was half of its host time: docs/performance.md, Data loader). The same float32 subtraction and
    division as the dataset's own normalisation, so the same values, bit for bit."""

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor):
        # (C, H, W) frames: a contiguous operand on both sides, so no broadcast of a (C, 1, 1) stride-0 operand
        self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

    def to(self, device: torch.device) -> Normalise:
        return Normalise(self.mean.to(device), self.std.to(device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A new contiguous tensor (``x`` is untouched: it may be a view of a batch the loader still holds)."""
        return torch.sub(x, self.mean).div_(self.std)


class ShardWindowDataset(Dataset):
    """Normalised windows read from a shard directory, for the training years (or any years) only; with
    ``normalise=False`` the raw windows, which ``self.normalise`` (a :class:`Normalise`) turns into the same
    normalised ones wherever the consumer wants them (the training loop: on its device).

    With ``step_hours`` k, windows use the frames whose hour since 1970-01-01T00 (on the shards' calendar) is a
    multiple of k (00, 06, 12, 18 UTC for k = 6), the axis a k-hourly conversion would have written, and ``stride``
    counts frames of that axis; on the noleap calendar a window runs from 28 February straight into 1 March.
    Monthly shards (``time_step_months`` in the index) step by calendar months: every frame, ``step_hours`` 1.
    Windows never cross a gap, nor a boundary between selected years with frames missing between them. ``step`` is
    the windows' TimeStep.

    ``mean`` and ``std`` have one entry per returned channel (after ``channels`` selects and orders shard
    channels). ``period``: [start, end) hours that further restrict ``years`` (a split given as a date range). The
    reader holds no open file until the first item is read in each process, so the dataset can be built in the
    parent and handed to DataLoader workers.
    """

    def __init__(
        self,
        directory: Path,
        years: Sequence[int],
        in_frames: int,
        out_frames: int,
        stride: int,
        step_hours: int = 1,
        *,
        mean: np.ndarray,
        std: np.ndarray,
        channels: Sequence[int] | None = None,
        period: tuple[np.datetime64, np.datetime64] | None = None,
        normalise: bool = True,
    ):
        if in_frames < 1 or out_frames < 1 or stride < 1 or step_hours < 1:
            raise ValueError(
                f"ShardWindowDataset: expected positive in_frames, out_frames, stride and step_hours, "
                f"got {in_frames}, {out_frames}, {stride}, {step_hours}"
            )
        self.reader = ShardReader(directory)
        self.step = window_step(TimeStep.of_index(self.reader.index), step_hours, directory)
        num_channels = self.reader.meta.shape[0]
        self.channels = None if channels is None else np.asarray(channels, dtype=np.int64)
        if self.channels is not None and (
            self.channels.ndim != 1 or not np.all((self.channels >= 0) & (self.channels < num_channels))
        ):
            raise ValueError(
                f"channels {list(channels)}: expected indices into the {num_channels} shard channels "
                f"{self.reader.meta.channels}"
            )
        c = num_channels if self.channels is None else len(self.channels)
        if self.channels is not None and np.array_equal(self.channels, np.arange(num_channels)):
            self.channels = None  # all channels in shard order: read straight into the batch
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        if self.mean.shape[0] != c or self.std.shape[0] != c or np.any(self.std <= 0):
            raise ValueError(
                f"mean/std: expected {c} entries (one per returned channel), std > 0; got "
                f"{self.mean.shape[0]} and {self.std.shape[0]}"
            )
        # Whole frames of means and standard deviations: numpy then runs its contiguous SIMD loop over each frame,
        # where broadcasting (C, 1, 1) runs a stride-0 loop 2-4x slower here (docs/performance.md, Data loader).
        # The same float32 subtraction and division per value, so the same bits; the cost is two frames of memory.
        frame = (c, *self.reader.meta.shape[1:])
        self._mean_frame = np.ascontiguousarray(np.broadcast_to(self.mean, frame))
        self._std_frame = np.ascontiguousarray(np.broadcast_to(self.std, frame))
        self.normalise = Normalise(self._mean_frame, self._std_frame)
        self.normalised = bool(normalise)  # False: __getitem__ returns raw windows, for self.normalise to normalise
        self.in_frames, self.out_frames, self.step_hours = int(in_frames), int(out_frames), int(step_hours)

        times = self.reader.times
        keep = in_split(times, years, period)
        keep &= self.step.ordinal(times) % step_hours == 0  # hours on the shards' calendar
        self.frames = np.flatnonzero(keep)  # global frame index of each frame on the subsampled axis
        self.starts = window_starts(times[self.frames], self.in_frames + self.out_frames, stride, self.step)
        self._spacing = _spacing(self.frames, self.starts, self.in_frames + self.out_frames)

    def __len__(self) -> int:
        return len(self.starts)

    def _frames(self, i: int) -> np.ndarray:
        s = int(self.starts[i])
        return self.frames[s : s + self.in_frames + self.out_frames]

    def times(self, i: int) -> np.ndarray:
        """Valid times (datetime64[h]) of window ``i``'s frames, inputs then targets."""
        return self.reader.times[self._frames(i)]

    def __getitem__(self, i: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One window, or a batch of them for a list of indices: read straight into one (B, T, C, H, W)
        tensor (in shared memory inside a DataLoader worker) and normalised in place unless ``normalised`` is False
        (see :func:`batch_loader`)."""
        if isinstance(i, (int, np.integer)):
            x, y = self[[int(i)]]
            return x[0], y[0]
        t = self.in_frames + self.out_frames
        batch = _empty((len(i), t, len(self.mean), *self.reader.meta.shape[1:]))
        out = batch.numpy()
        for b, j in enumerate(i):
            self._load(int(j), out[b])
        return batch[:, : self.in_frames], batch[:, self.in_frames :]

    def _load(self, i: int, out: np.ndarray) -> None:
        """Window ``i`` into ``out`` (T, C, H, W), normalised unless ``self.normalised`` is False. Each piece of it is
        subtracted from the shard's memory map (or from what h5py read) straight into ``out``, and the window divided
        in place while it is still in cache: one pass over memory, where reading the batch and then normalising it
        took three (docs/performance.md, Data loader). The same float32 operations, so the same values."""
        frames = self._frames(i)
        spacing = int(self._spacing[i])
        if spacing:  # equally spaced: one strided read
            runs = [(int(frames[0]), frames.size, spacing)]
        else:
            runs = [(first, n, 1) for first, n in _runs(frames)]
        done = 0
        for first, n, step in runs:
            for offset, count, source, rows in self.reader.pieces(first, n, step):
                into = out[done + offset : done + offset + count]
                if isinstance(source, np.ndarray):  # a memory map
                    raw = source[rows]
                else:
                    raw = into if self.channels is None else np.empty((count, *source.shape[1:]), np.float32)
                    source.read_direct(raw, rows)
                if self.normalised:
                    np.subtract(raw if self.channels is None else raw[:, self.channels], self._mean_frame, out=into)
                elif self.channels is not None:
                    np.take(raw, self.channels, axis=1, out=into)
                elif raw is not into:
                    np.copyto(into, raw)
            done += n
        if self.normalised:
            np.divide(out, self._std_frame, out=out)
