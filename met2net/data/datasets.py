"""Train/validation/test datasets from the config's data section.

Normalisation uses training-years statistics for every split (the reference normalised
each split with its own; see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from met2net.config import Config, ConfigError
from met2net.data.stats import Moments
from met2net.data.windows import WindowDataset, window_starts


@dataclass
class Splits:
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset | None
    mean: np.ndarray  # (C,) float64, training years
    std: np.ndarray


def build_splits(cfg: Config) -> Splits:
    d, m = cfg.data, cfg.model
    if d.source != "synthetic":
        raise ConfigError(f"'data.source' {d.source!r} is not available yet; use 'synthetic'")
    from met2net.data import synthetic

    unknown = [v for v in m.variables if v not in synthetic.VARIABLES]
    if unknown:
        raise ConfigError(f"'model.variables' {unknown} are not in the built-in dataset "
                          f"(it has {list(synthetic.VARIABLES)})")

    def load(years: list[int]) -> tuple[np.ndarray, np.ndarray]:
        f = synthetic.generate(years, grid=tuple(m.grid), seed=d.seed, step_hours=d.step_hours,
                               variables=m.variables)
        return f.time, np.stack([f.fields[v] for v in m.variables], axis=1)

    t_train, train = load(d.train_years)
    moments = Moments.of(train, channel_axis=1)
    mean, std = moments.mean, np.where(moments.std > 0, moments.std, 1.0)

    def dataset(times: np.ndarray, series: np.ndarray) -> WindowDataset:
        series = ((series - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
        starts = window_starts(times, m.in_frames + m.out_frames, d.stride,
                               np.timedelta64(d.step_hours, "h"))
        return WindowDataset(series, starts, m.in_frames, m.out_frames)

    test = dataset(*load(d.test_years)) if d.test_years else None
    return Splits(dataset(t_train, train), dataset(*load(d.val_years)), test, mean, std)
