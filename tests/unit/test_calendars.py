"""Model calendars (met2net/data/calendars.py): noleap steps across 29 February, 360-day monthly data, and the
calendars refused naming file and calendar. Real netCDF files written with cftime times."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from met2net.data.calendars import from_noleap_hours, noleap_hours
from met2net.data.convert import convert
from met2net.data.shards import ShardReader, read_index
from met2net.data.timestep import TimeStep
from met2net.data.windows import ShardWindowDataset
from tests.conftest import small_config

GRID = (4, 8)


def write(path: Path, times, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((len(times), *GRID)).astype(np.float32)
    lat = np.linspace(-67.5, 67.5, GRID[0])
    lon = np.arange(GRID[1]) * 45.0
    xr.Dataset({"tas": (("time", "lat", "lon"), values)}, coords={"time": times, "lat": lat, "lon": lon}).to_netcdf(
        path
    )
    return values


def cfg(train: list[int], val: list[int]):
    return small_config(
        "model.variables=[tas]",
        f"model.grid=[{GRID[0]},{GRID[1]}]",
        "data.variables=[{name: tas, file_glob: '*.nc', var: tas}]",
        f"data.train_years={train}",
        f"data.val_years={val}",
        "data.test_years=[]",
    )


def cftimes(start: str, periods: int, freq: str, calendar: str):
    return xr.date_range(start, periods=periods, freq=freq, calendar=calendar, use_cftime=True)


def test_noleap_hours_count_28_february_to_1_march_as_one_day():
    t = np.array(["1900-02-28T00", "1900-03-01T00", "2000-02-28T18", "2000-03-01T00", "2001-02-28T18"], "datetime64[h]")
    h = noleap_hours(t)
    assert (h[1] - h[0], h[3] - h[2], h[4] - h[2]) == (24, 6, 365 * 24)
    assert (from_noleap_hours(h) == t).all()
    step = TimeStep(6, "hours", "noleap")
    assert step.after(np.datetime64("2000-02-28T18", "h"), np.array([1, -1])).tolist() == [
        np.datetime64("2000-03-01T00", "h"),
        np.datetime64("2000-02-28T12", "h"),
    ]
    assert TimeStep(6).after(np.datetime64("2000-02-28T18", "h"), 1) == np.datetime64("2000-02-29T00", "h")


def test_six_hourly_noleap_data_step_across_a_leap_year_without_a_gap(tmp_path):
    times = cftimes("1999-01-01", 3 * 365 * 4, "6h", "noleap")  # 1999-2001, 2000 without 29 February
    values = write(tmp_path / "tas.nc", times)
    convert(tmp_path, cfg([1999, 2000], [2001]), tmp_path / "out", progress=False)  # was: a gap or a type error
    index = read_index(tmp_path / "out")
    assert (index["time_step_hours"], index["calendar"]) == (6, "noleap")
    reader = ShardReader(tmp_path / "out")
    t = reader.times
    assert t.size == values.shape[0] and not np.any(t.astype("datetime64[D]") == np.datetime64("2000-02-29"))
    np.testing.assert_array_equal(reader.read(0, t.size)[:, 0], values)
    ds = ShardWindowDataset(tmp_path / "out", [1999, 2000], 2, 2, 1, 6, mean=np.zeros(1), std=np.ones(1))
    assert ds.step == TimeStep(6, "hours", "noleap")
    assert len(ds) == 2 * 365 * 4 - 3  # every window, across New Year and 28 February → 1 March
    crossing = [i for i in range(len(ds)) if np.datetime64("2000-03-01T00", "h") in ds.times(i)]
    assert any(np.datetime64("2000-02-28T18", "h") in ds.times(i) for i in crossing)


def test_a_missing_time_is_still_a_gap_on_the_noleap_calendar(tmp_path):
    times = cftimes("2000-01-01", 365 * 4, "6h", "noleap")
    write(tmp_path / "tas.nc", times.delete(59 * 4))  # 2000-03-01T00
    with pytest.raises(ValueError, match=r"gap in time between 2000-02-28T18 and 2000-03-01T06 \(step 6 h \(noleap"):
        convert(tmp_path, cfg([2000], [2001]), tmp_path / "out", progress=False)


def test_monthly_360_day_data_convert_as_calendar_months(tmp_path):
    values = write(tmp_path / "tas.nc", cftimes("2000-01-01", 36, "MS", "360_day"))
    convert(tmp_path, cfg([2000, 2001], [2002]), tmp_path / "out", progress=False)
    index = read_index(tmp_path / "out")
    assert (index["time_step_months"], index["calendar"]) == (1, "360_day")
    reader = ShardReader(tmp_path / "out")
    assert reader.times[[0, 12, 35]].tolist() == [
        np.datetime64("2000-01-01T00", "h"),
        np.datetime64("2001-01-01T00", "h"),
        np.datetime64("2002-12-01T00", "h"),
    ]
    np.testing.assert_array_equal(reader.read(0, 36)[:, 0], values)


@pytest.mark.parametrize(
    "calendar, freq, match",
    [
        ("360_day", "D", r"tas\.nc: calendar '360_day' with a time on day 2 of a month .*only as monthly data"),
        ("all_leap", "6h", r"tas\.nc: calendar 'all_leap' with a time on day 2 .*only as monthly data"),
        ("julian", "MS", r"tas\.nc: calendar 'julian' is not supported.*convert_calendar"),
    ],
)
def test_calendars_met2net_cannot_read_are_refused_naming_file_and_calendar(tmp_path, calendar, freq, match):
    write(tmp_path / "tas.nc", cftimes("2001-01-01", 400, freq, calendar))
    with pytest.raises(ValueError, match=match):
        convert(tmp_path, cfg([2001], [2002]), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
