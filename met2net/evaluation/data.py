"""What evaluation and prediction read: windows of a split with their valid times, the grid, the variables'
units, the training years' climatology, and input frames ending at a chosen time — from the shards or the
built-in synthetic data, normalised with the *checkpoint's* statistics (the ones the model was trained with)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from met2net.config import Config, ConfigError
from met2net.data import masks, synthetic
from met2net.data.datasets import synthetic_series
from met2net.data.shards import ShardReader
from met2net.data.timestep import TimeStep
from met2net.data.windows import ShardWindowDataset, WindowDataset, in_split, window_starts
from met2net.errors import UserError
from met2net.evaluation.climatology import Climatology


@dataclass
class EvalData:
    windows: Dataset  # normalised (x (in, C, H, W), y (leads, C, H, W)) per window
    valid_times: Callable[[int], np.ndarray]  # window i → datetime64[h] of its in + leads frames
    lat: np.ndarray
    lon: np.ndarray
    variables: list[str]
    units: list[str]
    long_names: list[str]
    step: TimeStep  # of the windows: k hours (data.step_hours) or, for monthly shards, calendar months
    in_frames: int
    climatology: Callable[[], Climatology]  # built on first use (reads the training years)
    inputs_at: Callable[[np.datetime64], np.ndarray]  # init time → physical (in, C, H, W) frames ending there
    valid: np.ndarray | None = None  # (C, H, W) bool, the points that are scored (met2net/data/masks.py); None: all


def split_years(cfg: Config, split: str) -> list[int]:
    years = {"test": cfg.data.test_years, "val": cfg.data.val_years, "train": cfg.data.train_years}[split]
    if not years:
        raise ConfigError(
            f"'data.{split}_years' is empty: there is no {split} split to evaluate; set it (e.g. "
            f"data.{split}_years=[2017]) or choose another --split"
        )
    return list(years)


def eval_data(
    cfg: Config, mean: np.ndarray, std: np.ndarray, split: str, leads: int, window_days: int = 15
) -> EvalData:
    """``leads`` target frames per window (``model.out_frames`` × rollout steps)."""
    years = split_years(cfg, split)
    if cfg.data.source == "shards":
        return _from_shards(cfg, mean, std, years, leads, window_days, split)
    return _from_synthetic(cfg, mean, std, years, leads, window_days, split)


def _from_shards(
    cfg: Config, mean: np.ndarray, std: np.ndarray, years: list[int], leads: int, window_days: int, split: str
) -> EvalData:
    d, m = cfg.data, cfg.model
    root = Path(d.path)
    reader = ShardReader(root)
    meta = reader.meta
    missing = [v for v in m.variables if v not in meta.channels]
    if missing:
        raise ConfigError(
            f"{root}/index.json has no channels {missing} (it has {meta.channels}); the model was "
            "trained on them: point data.path at the shards it was trained on"
        )
    channels = [meta.channels.index(v) for v in m.variables]
    windows = ShardWindowDataset(
        root,
        years,
        m.in_frames,
        leads,
        d.stride,
        d.step_hours,
        mean=mean,
        std=std,
        channels=channels,
        period=d.period(split),
    )
    step = windows.step
    by_time = {t: i for i, t in enumerate(reader.times)}

    def frames(years_: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        in_train = in_split(reader.times, years_, d.period("train"))
        keep = np.flatnonzero(in_train & (step.ordinal(reader.times) % d.step_hours == 0))
        for lo in range(0, keep.size, 256):
            idx = keep[lo : lo + 256]
            yield reader.times[idx], np.stack([reader.read(int(i), 1)[0][channels] for i in idx])

    def inputs_at(init: np.datetime64) -> np.ndarray:
        wanted = step.after(init, np.arange(1 - m.in_frames, 1))
        absent = [str(t) for t in wanted if t not in by_time]
        if absent:
            raise UserError(
                f"init time {init}: the shards in {root} lack input frame(s) {absent} (they cover "
                f"{reader.times[0]} to {reader.times[-1]} every {TimeStep.of_index(reader.index)})"
            )
        return np.stack([reader.read(by_time[t], 1)[0][channels] for t in wanted])

    return EvalData(
        windows,
        windows.times,
        meta.lat,
        meta.lon,
        list(m.variables),
        [meta.units[c] for c in channels],
        [meta.long_names[c] for c in channels],
        step,
        m.in_frames,
        lambda: Climatology(frames(d.train_years), step, window_days),
        inputs_at,
        masks.select(masks.read_mask(root, reader.index), channels),
    )


def _from_synthetic(
    cfg: Config, mean: np.ndarray, std: np.ndarray, years: list[int], leads: int, window_days: int, split: str
) -> EvalData:
    d, m = cfg.data, cfg.model

    times, series = synthetic_series(cfg, years, split)
    normalised = ((series - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    step = TimeStep(d.step_hours)
    starts = window_starts(times, m.in_frames + leads, d.stride, step)
    windows = WindowDataset(normalised, starts, m.in_frames, leads)

    def inputs_at(init: np.datetime64) -> np.ndarray:
        wanted = step.after(init, np.arange(1 - m.in_frames, 1))
        their_years = sorted({int(str(t)[:4]) for t in wanted})
        t_all, s_all = synthetic_series(cfg, their_years)  # the built-in data exists for any year
        by_time = {t: i for i, t in enumerate(t_all)}
        absent = [str(t) for t in wanted if t not in by_time]
        if absent:
            raise UserError(f"init time {init}: not on the data's {d.step_hours}-hourly axis (no frame {absent[0]})")
        return s_all[[by_time[t] for t in wanted]]

    info = synthetic.VARIABLES
    return EvalData(
        windows,
        lambda i: times[int(starts[i]) : int(starts[i]) + m.in_frames + leads],
        synthetic.latitudes(m.grid[0]),
        synthetic.longitudes(m.grid[1]),
        list(m.variables),
        [info[v]["units"] for v in m.variables],
        [info[v]["long_name"] for v in m.variables],
        step,
        m.in_frames,
        lambda: Climatology([synthetic_series(cfg, d.train_years, "train")], step, window_days),
        inputs_at,
    )


def normalise(frames: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Physical (…, C, H, W) frames → the model's normalised float32 inputs."""
    return torch.from_numpy(((frames - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
