"""The time step of a series: k hours, or k calendar months.

Shards store times as hours since 1970, and most data step by a fixed number of hours. Monthly means (NCEP/NCAR,
ERA5 monthly, CMIP ``Amon``) do not: a month lasts 28 to 31 days, so as hours every month would be a gap. A series
whose times all fall on the 1st of the month at one hour of day, a constant number of months apart, steps by
calendar months instead; windows then take consecutive months, lead times count months, and the climatology is by
month of year. ``index.json`` records which (``time_step_hours`` or ``time_step_months``, docs/data-format.md).

Anything in between is refused with the file and the times, never guessed: mid-month stamps (CMIP's 16th at 12:00)
and monthly stamps at different hours of day.

A step also has the calendar it is counted on (met2net/data/calendars.py): hours on the standard or the 365-day
(``noleap``) calendar, months on any; ``index.json`` records a calendar other than the standard one as ``calendar``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from met2net.data.calendars import CALENDARS, HOURLY, NOLEAP, STANDARD, from_noleap_hours, ordinal_hours

UNITS = ("hours", "months")
MONTH_HOURS = (28 * 24, 31 * 24)  # the shortest and the longest calendar month


@dataclass(frozen=True)
class TimeStep:
    size: int
    unit: str = "hours"
    calendar: str = STANDARD

    def __post_init__(self) -> None:
        if self.unit not in UNITS or self.size < 1:
            raise ValueError(f"TimeStep: expected a positive size in {UNITS}, got {self.size} {self.unit}")
        if self.calendar not in (CALENDARS if self.monthly else HOURLY):
            raise ValueError(f"TimeStep: {self.unit} cannot be counted on the {self.calendar!r} calendar")

    @property
    def monthly(self) -> bool:
        return self.unit == "months"

    def __str__(self) -> str:
        size = f"{self.size} month" + ("s" if self.size > 1 else "") if self.monthly else f"{self.size} h"
        return size if self.calendar == STANDARD else f"{size} ({self.calendar} calendar)"

    @classmethod
    def of_index(cls, index: dict) -> TimeStep:
        """The step of a shard directory's ``index.json``."""
        calendar = index.get("calendar", STANDARD)
        if "time_step_months" in index:
            return cls(int(index["time_step_months"]), "months", calendar)
        return cls(int(index["time_step_hours"]), calendar=calendar)

    def index_entry(self) -> dict[str, int | str]:
        """What ``index.json`` records: ``{"time_step_hours": k}`` or ``{"time_step_months": k}``, and the
        ``calendar`` when it is not the standard one."""
        return {
            f"time_step_{self.unit}": self.size,
            **({"calendar": self.calendar} if self.calendar != STANDARD else {}),
        }

    def ordinal(self, times: np.ndarray) -> np.ndarray:
        """Hours since 1970-01-01T00 counted on this step's calendar (int64), of datetime64 ``times``."""
        return ordinal_hours(times, self.calendar if not self.monthly else STANDARD)

    def consecutive(self, times: np.ndarray) -> np.ndarray:
        """(N − 1,) bools: is ``times[i + 1]`` exactly one step after ``times[i]`` (datetime64)?"""
        t = np.asarray(times).astype("datetime64[h]")
        if not self.monthly:
            return np.diff(self.ordinal(t)) == self.size
        return self.after(t[:-1], 1) == t[1:]

    def after(self, times: np.ndarray | np.datetime64, steps: int | np.ndarray) -> np.ndarray:
        """``times`` + ``steps`` × this step (datetime64[h]); months keep the day and the hour of day; hours on the
        noleap calendar skip 29 February."""
        t = np.asarray(times).astype("datetime64[h]")
        n = np.asarray(steps, dtype=np.int64) * self.size
        if not self.monthly:
            if self.calendar == NOLEAP:
                return from_noleap_hours(self.ordinal(t) + n)
            return t + n.astype("timedelta64[h]")
        month = t.astype("datetime64[M]")
        offset = t - month.astype("datetime64[h]")  # day and hour within the month
        return (month + n.astype("timedelta64[M]")).astype("datetime64[h]") + offset


def of_times(
    times: np.ndarray, where: str | Sequence[str], allow_gaps: bool, calendar: str = STANDARD
) -> TimeStep | None:
    """The step of a file's (or a year's) times, datetime64[h], strictly increasing; None for fewer than two times.

    Calendar months when every time is on the 1st of its month at one hour of day, else hours (counted on
    ``calendar``: standard or noleap; see met2net/data/calendars.py). A step that is not the same everywhere is a
    gap: an error naming ``where`` and the two times, unless ``allow_gaps`` (the step is then the smallest). Raises
    for monthly-looking stamps that are not on the 1st or not at one hour of day.
    """
    t = np.asarray(times).astype("datetime64[h]")
    if t.size < 2:
        return None
    month = t.astype("datetime64[M]")
    day = t.astype("datetime64[D]")
    hour = (t - day).astype(np.int64)
    # one time per month, each on the 1st (hourly data of a month's first day are on the 1st too, but share a month)
    on_first = bool((day == month.astype("datetime64[D]")).all() and (np.diff(month) > np.timedelta64(0, "M")).all())
    if on_first and (hour != hour[0]).any():
        i = int(np.flatnonzero(hour != hour[0])[0])
        raise ValueError(
            f"{where}: times on the 1st of each month but at different hours ({_iso(t[0])}, {_iso(t[i])}); monthly "
            "data needs one hour of day: relabel the times (e.g. to 00:00) before converting"
        )
    if on_first:
        diffs, unit = np.diff(month.astype(np.int64)), "months"
    else:
        if calendar not in HOURLY:
            raise ValueError(
                f"{where}: times of the {calendar} calendar that are not one per month ({_iso(t[0])}, {_iso(t[1])}, "
                "...); met2net reads that calendar only as monthly data (met2net/data/calendars.py)"
            )
        diffs, unit = np.diff(ordinal_hours(t, calendar)), "hours"
        if diffs.min() >= MONTH_HOURS[0] and diffs.max() <= MONTH_HOURS[1] and diffs.min() != diffs.max():
            raise ValueError(
                f"{where}: steps of 28 to 31 days, as monthly data, but the times are not on the 1st of the month "
                f"({_iso(t[0])}, {_iso(t[1])}, ...); met2net reads monthly data stamped on the 1st: relabel the times "
                "(xarray: ds['time'] = ds.indexes['time'].to_period('M').to_timestamp()) before converting"
            )
    step = int(diffs.min())
    if (diffs != step).any() and not allow_gaps:
        i = int(np.flatnonzero(diffs != step)[0])
        raise ValueError(
            f"{where}: gap in time between {_iso(t[i])} and {_iso(t[i + 1])} (step {TimeStep(step, unit, calendar)} "
            "elsewhere); fill it, or set data.allow_gaps=true (training windows never cross a gap)"
        )
    return TimeStep(step, unit, calendar)


def _iso(t: np.datetime64) -> str:
    return str(np.datetime64(t, "h"))
