"""A climatology of the training years by day of year and hour of day — the reference for ACC's anomalies and the
climatology baseline forecast.

Days are counted on a 366-day calendar (29 February has its own day; 1 March is day 60 in every year), hours in
slots of the data's time step. Each (day, slot) is the mean over the training years of the days within
``window_days`` of it (circularly), as WeatherBench 2 smooths its climatology with a sliding window: with few
training years the raw per-day mean is mostly noise.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DAYS = 366


def calendar_index(times: np.ndarray, step_hours: int) -> tuple[np.ndarray, np.ndarray]:
    """(day on the 366-day calendar, hour slot) of each time (datetime64)."""
    t = np.asarray(times).astype("datetime64[h]")
    year = t.astype("datetime64[Y]")
    day = (t.astype("datetime64[D]") - year.astype("datetime64[D]")).astype(np.int64)
    y = year.astype(np.int64) + 1970
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    day = np.where(~leap & (day >= 59), day + 1, day)
    hour = (t - t.astype("datetime64[D]")).astype(np.int64)
    return day, hour // step_hours


class Climatology:
    """Mean fields (DAYS, slots, C, H, W) of the training years, float32, in physical units."""

    def __init__(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], step_hours: int, window_days: int = 15):
        """``chunks``: (times (N,), fields (N, C, H, W)) pieces of the training years, in any order."""
        if 24 % step_hours:
            raise ValueError(f"climatology: step_hours {step_hours} must divide 24")
        self.step_hours, self.window_days = step_hours, window_days
        slots = 24 // step_hours
        sums = counts = None
        for times, fields in chunks:
            if sums is None:
                sums = np.zeros((DAYS, slots, *fields.shape[1:]), dtype=np.float64)
                counts = np.zeros((DAYS, slots), dtype=np.int64)
            day, slot = calendar_index(times, step_hours)
            np.add.at(sums, (day, slot), fields)
            np.add.at(counts, (day, slot), 1)
        if sums is None:
            raise ValueError("climatology: the training years hold no data")
        total, n = np.zeros_like(sums), np.zeros_like(counts)
        for shift in range(-window_days, window_days + 1):
            total += np.roll(sums, shift, axis=0)
            n += np.roll(counts, shift, axis=0)
        if np.any(n == 0):
            day, slot = np.argwhere(n == 0)[0]
            raise ValueError(
                f"climatology: no training data within {window_days} days of calendar day {day + 1}, "
                f"hour {slot * step_hours:02d}; use more training years or a wider window"
            )
        self.values = (total / n.reshape(*n.shape, *([1] * (sums.ndim - 2)))).astype(np.float32)

    def at(self, times: np.ndarray) -> np.ndarray:
        """The climatology at each valid time: (..., C, H, W) for times of shape (...)."""
        day, slot = calendar_index(np.asarray(times), self.step_hours)
        return self.values[day, slot]
