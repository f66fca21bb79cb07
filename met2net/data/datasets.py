"""Train/validation/test datasets from the config's data section.

``shards``: windows read from HDF5 shards, normalised with the shard directory's ``stats.json`` (training years): by
the loader, or (``normalise_in_loader=False``) by ``Splits.normalise`` wherever the consumer wants (the training loop
on a GPU: on the device, while the loader only copies). ``synthetic``: the built-in dataset generated in memory, for
quick experiments without files. Either way every split is normalised with training-years statistics (the reference
normalised each split with its own; see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from met2net.config import Config, ConfigError
from met2net.data import masks
from met2net.data.shards import ShardError, iso, read_index
from met2net.data.stats import Moments, read_stats
from met2net.data.timestep import TimeStep
from met2net.data.windows import Normalise, ShardWindowDataset, WindowDataset, in_split, window_starts
from met2net.errors import UserError

_SPLITS = {"train_years": "training", "val_years": "validation", "test_years": "test"}
_SPLITS.update({k.removesuffix("_years"): v for k, v in _SPLITS.items()})


class SplitTooShort(UserError):
    """A split holds no whole window: training would run on nothing, or validate on nothing and look fine."""


def check_windows(
    cfg: Config, key: str, times: np.ndarray, num_windows: int, shards: Path | None, step: TimeStep
) -> None:
    """Raise SplitTooShort when the split of ``data.<key>`` has no window; ``times``: its frames on the windows'
    ``step`` axis (datetime64[h]); ``shards``: the directory they came from (None: the built-in data)."""
    if num_windows:
        return
    m, d = cfg.model, cfg.data
    split = key.removesuffix("_years")
    ranged = d.period(split) is not None
    key = split if ranged else key  # a split given as a date range is named by it
    span = f"{iso(times[0])} .. {iso(times[-1])}, " if times.size else ""
    breaks = np.flatnonzero(~step.consecutive(times)) + 1
    longest = int(np.diff(np.r_[0, breaks, times.size]).max()) if times.size else 0
    gaps = f"; the longest run without a gap is {longest} frames" if breaks.size else ""
    where, convert = ("the built-in dataset", "") if shards is None else (shards, f" (convert them into {shards})")
    raise SplitTooShort(
        f"the {_SPLITS[key]} split (data.{key} {getattr(d, key)}) has {times.size} frames ({span}every "
        f"{step}) in {where}{gaps}, fewer than one window of {m.in_frames + m.out_frames} frames "
        f"(model.in_frames {m.in_frames} + model.out_frames {m.out_frames}); "
        f"{'widen the range' if ranged else 'add years to'} data.{key}{convert} or shorten the window"
    )


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset | None
    mean: np.ndarray  # (C,) float64, training years
    std: np.ndarray
    # (C, H, W) bool, the points that count in the loss (met2net/data/masks.py); None: every point
    valid: np.ndarray | None = None
    # what makes the datasets' batches normalised (shards: they hold raw windows); None: they come normalised
    normalise: Normalise | None = None


def build_splits(cfg: Config, normalise_in_loader: bool = True) -> Splits:
    """``normalise_in_loader=False``: shard splits give raw windows, and ``Splits.normalise`` normalises them."""
    return _shard_splits(cfg, normalise_in_loader) if cfg.data.source == "shards" else _synthetic_splits(cfg)


def _shard_splits(cfg: Config, normalise_in_loader: bool) -> Splits:
    d, m = cfg.data, cfg.model
    root = Path(d.path)
    index, stats = read_index(root), read_stats(root)
    missing = [v for v in m.variables if v not in index["channels"]]
    if missing:
        raise ConfigError(
            f"'model.variables' {missing} are not in {root}/index.json (it has {index['channels']}); "
            f"convert them or change model.variables"
        )
    grid = [len(index["lat"]), len(index["lon"])]
    if grid != list(m.grid):
        raise ConfigError(
            f"'model.grid' {m.grid} differs from the shards' grid {grid} in {root}; "
            f"set model.grid={grid} (or convert with another data.subsample)"
        )
    unknown = [v for v in m.variables if v not in stats["channels"]]
    if unknown:
        raise ShardError(
            f"{root}/stats.json has no statistics for {unknown} (it has {stats['channels']}); re-run met2net data "
            f"stats {root} --train-years ..."
        )
    if sorted(stats["train_years"]) != sorted(d.train_years) or stats.get("train_period", []) != list(d.train):
        given = f"'data.train' is {list(d.train)}" if d.train else f"'data.train_years' is {d.train_years}"
        had = (
            f"the period {stats['train_period']}"
            if stats.get("train_period")
            else f"train years {stats['train_years']}"
        )
        redo = f"--train {' '.join(d.train)}" if d.train else f"--train-years {','.join(map(str, d.train_years))}"
        raise ConfigError(
            f"{root}/stats.json was computed for {had}, but {given}: re-run met2net data stats {root} {redo}"
        )
    mean = np.array([stats["mean"][stats["channels"].index(v)] for v in m.variables])
    std = np.array([stats["std"][stats["channels"].index(v)] for v in m.variables])
    std = np.where(std > 0, std, 1.0)
    channels = [index["channels"].index(v) for v in m.variables]

    def dataset(key: str) -> ShardWindowDataset:
        ds = ShardWindowDataset(
            root,
            getattr(d, key),
            m.in_frames,
            m.out_frames,
            d.stride,
            d.step_hours,
            mean=mean,
            std=std,
            channels=channels,
            period=d.period(key.removesuffix("_years")),
            normalise=normalise_in_loader,
        )
        check_windows(cfg, key, ds.reader.times[ds.frames], len(ds), root, ds.step)
        return ds

    valid = masks.select(masks.read_mask(root, index), channels)
    train = dataset("train_years")
    val, test = dataset("val_years"), dataset("test_years") if d.test_years else None
    return Splits(train, val, test, mean, std, valid, None if normalise_in_loader else train.normalise)


def synthetic_series(cfg: Config, years: list[int], split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The built-in data of ``years`` for the config's variables and grid: times (datetime64[h]) and physical
    fields (N, C, H, W); with ``split`` (train, val, test) given as a date range, only the times inside it."""
    from met2net.data import synthetic

    d, m = cfg.data, cfg.model
    unknown = [v for v in m.variables if v not in synthetic.VARIABLES]
    if unknown:
        raise ConfigError(
            f"'model.variables' {unknown} are not in the built-in dataset (it has {list(synthetic.VARIABLES)})"
        )
    f = synthetic.generate(years, grid=tuple(m.grid), seed=d.seed, step_hours=d.step_hours, variables=m.variables)
    keep = in_split(f.time, years, d.period(split) if split else None)
    return f.time[keep], np.stack([f.fields[v][keep] for v in m.variables], axis=1)


def _synthetic_splits(cfg: Config) -> Splits:
    d, m = cfg.data, cfg.model

    t_train, train = synthetic_series(cfg, d.train_years, "train")
    moments = Moments.of(train, channel_axis=1)
    mean, std = moments.mean, np.where(moments.std > 0, moments.std, 1.0)

    def dataset(key: str, times: np.ndarray, series: np.ndarray) -> WindowDataset:
        series = ((series - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
        step = TimeStep(d.step_hours)
        starts = window_starts(times, m.in_frames + m.out_frames, d.stride, step)
        check_windows(cfg, key, times, len(starts), None, step)
        return WindowDataset(series, starts, m.in_frames, m.out_frames)

    train_split = dataset("train_years", t_train, train)  # checked in split order: train, val, test
    val = dataset("val_years", *synthetic_series(cfg, d.val_years, "val"))
    test = dataset("test_years", *synthetic_series(cfg, d.test_years, "test")) if d.test_years else None
    return Splits(train_split, val, test, mean, std)
