"""CF calendars of source time axes: which ones met2net reads, and counting hours on the 365-day calendar.

Shards store times as numpy datetime64 (the proleptic Gregorian calendar), and climate models' output often uses
another calendar (xarray decodes those to cftime objects). What each one becomes:

* ``standard``, ``gregorian``, ``proleptic_gregorian``: read as they are.
* ``noleap``/``365_day``: every date of a 365-day year exists in the Gregorian calendar, so the times keep their
  labels; the data simply have no 29 February. Steps are counted on the 365-day calendar, so 28 Feb 18:00 → 1 Mar
  00:00 of 2000 is one 6-hour step, not a gap; ``index.json`` records ``"calendar": "noleap"`` and windows, gaps and
  forecast valid times follow it (met2net/data/timestep.py).
* ``360_day``, ``all_leap``/``366_day``: labels such as 30 February, or 29 February 2001, have no Gregorian date.
  Monthly data (every time on the 1st of its month) are read as calendar months, which are the same in every
  calendar; finer steps are refused naming the file and the calendar.
* anything else (``julian``, ``none``, ...): refused naming the file and the calendar.
"""

from __future__ import annotations

import numpy as np

from met2net.errors import UserError

STANDARD, NOLEAP = "standard", "noleap"
ALIASES = {
    "standard": STANDARD,
    "gregorian": STANDARD,
    "proleptic_gregorian": STANDARD,
    "noleap": NOLEAP,
    "365_day": NOLEAP,
    "360_day": "360_day",
    "all_leap": "all_leap",
    "366_day": "all_leap",
}
CALENDARS = (STANDARD, NOLEAP, "360_day", "all_leap")  # after ALIASES
HOURLY = (STANDARD, NOLEAP)  # calendars whose times may step by hours; the others by calendar months only
_CONVERT = (
    "convert the times first, e.g. with xarray: ds.convert_calendar('noleap', align_on='year') (360_day) or "
    "ds.convert_calendar('standard', align_on='date', missing=np.nan) and then drop or fill the missing times"
)


def decode(values: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """A decoded time coordinate (datetime64, or cftime objects) as datetime64 labels, and its calendar (one of
    `CALENDARS`). Raises UserError naming ``where`` for values that are not dates, a calendar met2net does not read,
    and 360-day or 366-day times that are not on the 1st of a month."""
    v = np.asarray(values)
    if np.issubdtype(v.dtype, np.datetime64):
        return v, STANDARD
    name = getattr(next(iter(v.flat), None), "calendar", None)
    if name is None:
        raise UserError(
            f"{where}: its time coordinate does not decode to dates (dtype {v.dtype}); give it CF units such as "
            "'hours since 1970-01-01' and, if it is not the standard one, a calendar attribute"
        )
    calendar = ALIASES.get(str(name).lower())
    if calendar is None:
        raise UserError(
            f"{where}: calendar {name!r} is not supported; met2net reads the standard calendar, noleap/365_day, and "
            f"360_day or all_leap/366_day for monthly data; {_CONVERT}"
        )
    times = list(v.flat)
    if calendar not in HOURLY:
        off = next((t for t in times if t.day != 1), None)
        if off is not None:
            raise UserError(
                f"{where}: calendar {name!r} with a time on day {off.day} of a month ({off.isoformat()}); met2net "
                f"reads {calendar} data only as monthly data, one time per month on the 1st (relabel monthly means "
                f"to the 1st), since its dates are not all dates of the standard calendar; for finer steps {_CONVERT}"
            )
    if calendar == NOLEAP:
        import cftime

        minutes = np.rint(cftime.date2num(times, "minutes since 1970-01-01", calendar="noleap")).astype(np.int64)
        hours, rest = np.divmod(minutes, 60)
        labels = from_noleap_hours(hours).astype("datetime64[m]") + rest.astype("timedelta64[m]")
    else:
        labels = np.array([np.datetime64(t.strftime("%Y-%m-%dT%H:%M:%S")) for t in times], dtype="datetime64[s]")
    return labels.reshape(v.shape), calendar


def _leap(year: np.ndarray) -> np.ndarray:
    return (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))


def noleap_hours(times: np.ndarray) -> np.ndarray:
    """Hours since 1970-01-01T00 counted on the 365-day calendar, of Gregorian labels that are dates of it (no
    29 February): 2000-03-01T00 is 24 h after 2000-02-28T00."""
    t = np.asarray(times).astype("datetime64[h]")
    day = t.astype("datetime64[D]")
    year_start = day.astype("datetime64[Y]")
    year = year_start.astype(np.int64) + 1970
    doy = (day - year_start.astype("datetime64[D]")).astype(np.int64)
    doy = doy - (_leap(year) & (doy >= 60))
    return ((year - 1970) * 365 + doy) * 24 + (t - day.astype("datetime64[h]")).astype(np.int64)


def from_noleap_hours(hours: np.ndarray) -> np.ndarray:
    """The inverse of `noleap_hours`: datetime64[h] labels (never a 29 February)."""
    days, hour = np.divmod(np.asarray(hours, dtype=np.int64), 24)
    years, doy = np.divmod(days, 365)
    year = years + 1970
    start = years.astype("datetime64[Y]").astype("datetime64[D]")
    day = start + (doy + (_leap(year) & (doy >= 59))).astype("timedelta64[D]")
    return day.astype("datetime64[h]") + hour.astype("timedelta64[h]")


def ordinal_hours(times: np.ndarray, calendar: str) -> np.ndarray:
    """Hours since 1970-01-01T00 on ``calendar`` (standard or noleap) of datetime64 labels."""
    if calendar == NOLEAP:
        return noleap_hours(times)
    return np.asarray(times).astype("datetime64[h]").astype(np.int64)
