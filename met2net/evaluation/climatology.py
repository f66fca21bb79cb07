"""A climatology of the training years by day of year and hour of day — the reference for ACC's anomalies and the
climatology baseline forecast.

Days are counted on a 366-day calendar (29 February has its own day; 1 March is day 60 in every year), hours in
slots of the data's time step. Each (day, slot) is the mean over the training years of the days within
``window_days`` of it (circularly), as WeatherBench 2 smooths its climatology with a sliding window: with few
training years the raw per-day mean is mostly noise. Monthly data (met2net/data/timestep.py) have a climatology by
month of year: the mean of each calendar month over the training years, unsmoothed (a month already averages ~30
days).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from met2net.data.timestep import TimeStep
from met2net.errors import UserError

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


def month_index(times: np.ndarray) -> np.ndarray:
    """Month of year, 0 (January) to 11, of each time (datetime64)."""
    return np.asarray(times).astype("datetime64[M]").astype(np.int64) % 12


class Climatology:
    """Mean fields of the training years, float32, in physical units: (DAYS, slots, C, H, W) by calendar day and
    hour slot for hourly data, (12, C, H, W) by month of year (no smoothing) for monthly data."""

    def __init__(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], step: int | TimeStep, window_days: int = 15):
        """``chunks``: (times (N,), fields (N, C, H, W)) pieces of the training years, in any order; ``step``: the
        data's time step (an int: hours)."""
        step = step if isinstance(step, TimeStep) else TimeStep(int(step))
        if not step.monthly and 24 % step.size:
            raise UserError(f"climatology: step_hours {step.size} must divide 24")
        self.step, self.window_days = step, window_days
        table = (12,) if step.monthly else (DAYS, 24 // step.size)
        sums = counts = None
        for times, fields in chunks:
            if sums is None:
                sums = np.zeros((*table, *fields.shape[1:]), dtype=np.float64)
                counts = np.zeros(table, dtype=np.int64)
            where = self._index(times)
            np.add.at(sums, where, fields)
            np.add.at(counts, where, 1)
        if sums is None:
            raise UserError("climatology: the training years hold no data")
        if step.monthly:
            total, n = sums, counts
            if np.any(n == 0):
                raise UserError(
                    f"climatology: no training data in month {int(np.argwhere(n == 0)[0][0]) + 1} of the year; "
                    "use training years that cover every month"
                )
        else:
            total, n = np.zeros_like(sums), np.zeros_like(counts)
            for shift in range(-window_days, window_days + 1):
                total += np.roll(sums, shift, axis=0)
                n += np.roll(counts, shift, axis=0)
            if np.any(n == 0):
                day, slot = np.argwhere(n == 0)[0]
                raise UserError(
                    f"climatology: no training data within {window_days} days of calendar day {day + 1}, "
                    f"hour {slot * step.size:02d}; use more training years or a wider window"
                )
        self.values = (total / n.reshape(*n.shape, *([1] * (sums.ndim - n.ndim)))).astype(np.float32)

    def _index(self, times: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.step.monthly:
            return (month_index(times),)
        return calendar_index(times, self.step.size)

    def at(self, times: np.ndarray) -> np.ndarray:
        """The climatology at each valid time: (..., C, H, W) for times of shape (...)."""
        return self.values[self._index(np.asarray(times))]
