"""Monthly data: a calendar month as the time step, from real netCDF files through conversion, windows, climatology,
evaluation and prediction (met2net/data/timestep.py)."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from met2net.cli import main
from met2net.config import load_config
from met2net.data.convert import convert
from met2net.data.shards import read_index
from met2net.data.stats import compute_stats, write_stats
from met2net.data.timestep import TimeStep
from met2net.data.windows import ShardWindowDataset, window_starts
from met2net.errors import UserError
from met2net.evaluation.climatology import Climatology
from met2net.evaluation.evaluate import evaluate
from met2net.evaluation.predict import predict
from met2net.train import run_train

GRID = (6, 8)
YEARS = [2000, 2001, 2002, 2003]
MONTHLY = [
    "model.variables=[air]",
    "model.in_frames=2",
    "model.out_frames=2",
    f"model.grid=[{GRID[0]},{GRID[1]}]",
    "model.hid_s=4",
    "model.hid_t=8",
    "model.num_heads=2",
    "model.num_translator_blocks=1",
    "data.variables=[{name: air, file_glob: air.mon.mean.nc, var: air}]",
    "data.train_years=[2000,2001]",
    "data.val_years=[2002]",
    "data.test_years=[2003]",
]


def monthly_file(path: Path, times: pd.DatetimeIndex | np.ndarray, seed: int = 0) -> Path:
    """A real netCDF file of monthly means: (time, lat, lon) air temperature with a seasonal cycle."""
    times = pd.DatetimeIndex(times)
    rng = np.random.default_rng(seed)
    season = 10 * np.cos(2 * np.pi * (times.month.to_numpy() - 1) / 12)
    air = 280 + season[:, None, None] + rng.normal(0, 1, (len(times), *GRID))
    ds = xr.Dataset(
        {"air": (("time", "lat", "lon"), air.astype(np.float32), {"units": "degK", "long_name": "air temperature"})},
        coords={"time": times, "lat": np.linspace(90, -90, GRID[0]), "lon": np.arange(GRID[1]) * 45.0},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path)
    return path


def months(first: str, count: int) -> pd.DatetimeIndex:
    return pd.date_range(first, periods=count, freq="MS")


def cfg(*overrides: str):
    return load_config(None, [*MONTHLY, *overrides])


@pytest.fixture
def shards(tmp_path) -> Path:
    monthly_file(tmp_path / "nc/air.mon.mean.nc", months("2000-01-01", 48))
    out = tmp_path / "shards"
    convert(tmp_path / "nc", cfg(), out, progress=False)
    write_stats(out, compute_stats(out, [2000, 2001]), ["air"], [2000, 2001])
    return out


def test_a_monthly_axis_is_recorded_as_calendar_months(shards):
    index = read_index(shards)
    assert index["time_step_months"] == 1 and "time_step_hours" not in index
    assert [e["num_times"] for e in index["shards"]] == [12] * 4
    assert TimeStep.of_index(index) == TimeStep(1, "months")
    assert str(TimeStep(1, "months")) == "1 month" and str(TimeStep(6)) == "6 h"


def test_windows_step_by_month_across_years(shards):
    ds = ShardWindowDataset(shards, [2000, 2001], 2, 2, 1, mean=np.zeros(1), std=np.ones(1))
    assert len(ds) == 24 - 4 + 1  # the windows cross from December into January
    t = ds.times(10)
    assert [str(x)[:7] for x in t] == ["2000-11", "2000-12", "2001-01", "2001-02"]
    with pytest.raises(ValueError, match=r"monthly.*data.step_hours"):
        ShardWindowDataset(shards, [2000], 2, 2, 1, 6, mean=np.zeros(1), std=np.ones(1))


def test_window_starts_break_at_a_missing_month():
    times = np.array(["2000-01-01", "2000-02-01", "2000-03-01", "2000-05-01", "2000-06-01"], dtype="datetime64[h]")
    np.testing.assert_array_equal(window_starts(times, 2, 1, TimeStep(1, "months")), [0, 1, 3])
    hourly = np.arange(5).astype("datetime64[h]")
    np.testing.assert_array_equal(window_starts(hourly, 2, 1, np.timedelta64(1, "h")), [0, 1, 2, 3])


def test_a_missing_month_is_a_gap_naming_the_file_and_the_months(tmp_path):
    monthly_file(tmp_path / "nc/air.mon.mean.nc", months("2000-01-01", 48).delete(15))
    with pytest.raises(ValueError, match=r"air\.mon\.mean\.nc.*gap in time between 2001-03-01T00 and 2001-05-01T00"):
        convert(tmp_path / "nc", cfg(), tmp_path / "out", progress=False)
    convert(tmp_path / "nc", cfg("data.allow_gaps=true"), tmp_path / "out", progress=False)
    assert read_index(tmp_path / "out")["time_step_months"] == 1


@pytest.mark.parametrize(
    "times, match",
    [
        (
            months("2000-01-01", 48) + pd.Timedelta(days=14, hours=12),
            r"28 to 31 days.*not on the 1st of the month.*2000-01-15T12",
        ),
        (
            months("2000-01-01", 48) + pd.to_timedelta(np.r_[[0] * 20, [12], [0] * 27], unit="h"),
            r"1st of each month but at different hours.*2001-09-01T12",
        ),
    ],
    ids=["mid-month", "mixed-hours"],
)
def test_ambiguous_monthly_stamps_are_refused_naming_file_and_times(tmp_path, times, match):
    monthly_file(tmp_path / "nc/air.mon.mean.nc", times)
    with pytest.raises(ValueError, match=r"air\.mon\.mean\.nc.*" + match):
        convert(tmp_path / "nc", cfg(), tmp_path / "out", progress=False)


def test_monthly_climatology_is_by_month_of_year():
    times = months("2000-01-01", 36).to_numpy().astype("datetime64[h]")
    fields = np.random.default_rng(0).normal(size=(36, 1, 2, 3))
    clim = Climatology([(times[:10], fields[:10]), (times[10:], fields[10:])], TimeStep(1, "months"))
    expected = fields.reshape(3, 12, 1, 2, 3).mean(axis=0)
    np.testing.assert_allclose(clim.values, expected, rtol=1e-6)
    np.testing.assert_allclose(clim.at(np.array(["2005-07-01T00"], dtype="datetime64[h]")), expected[[6]], rtol=1e-6)


@pytest.fixture
def run(shards, tmp_path) -> Path:
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    path = tmp_path / "run"
    train = ["training.max_steps=2", "training.batch_size=2", "training.progress=false", f"run.dir={path}"]
    assert run_train(cfg("data.source=shards", f"data.path={shards}", *train)).finished
    for s, handler in saved.items():
        signal.signal(s, handler)
    return path


def test_monthly_evaluation_and_forecasts_count_leads_in_months(run, tmp_path):
    ev = evaluate(run, progress=False)
    assert ev.leads == [1, 2] and ev.lead_unit == "months" and ev.count == 12 - 4 + 1
    assert main(["evaluate", str(run), "-o", str(tmp_path / "ev"), "--no-plots"]) == 0
    with open(tmp_path / "ev/metrics.csv") as f:
        assert next(csv.reader(f)) == ["variable", "lead_months", "metric", "model", "value"]
    assert json.loads((tmp_path / "ev/metrics.json").read_text())["lead_months"] == [1, 2]
    ds = predict(run, ["2003-01-01T00"])
    assert [str(t)[:10] for t in ds["time"].values[0]] == ["2003-02-01", "2003-03-01"]
    assert list(ds["forecast_period"].values) == [1, 2] and ds["forecast_period"].attrs["units"] == "months"
    assert main(["predict", str(run), "--init", "2003-01-01T00", "-o", str(tmp_path / "f.nc")]) == 0
    with xr.open_dataset(tmp_path / "f.nc") as back:
        assert list(back["forecast_period"].values) == [1, 2]
        assert str(back["time"].values[0, 1])[:10] == "2003-03-01"
    # an init the shards cannot serve: its input frames lie before the first month, or after the last
    with pytest.raises(UserError, match=r"init time 2000-01-01T00: the shards in .* lack input frame\(s\) \['1999-"):
        predict(run, ["2000-01-01T00"])
    with pytest.raises(
        UserError, match=r"lack input frame\(s\) \['2004-05-01T00', '2004-06-01T00'\] \(they cover 2000"
    ):
        predict(run, ["2004-06-01T00"])
