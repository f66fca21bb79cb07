"""Splits given as date ranges (data.train / data.val / data.test: [START, END], ends inclusive at the precision
written) beside calendar years: config, statistics, training splits and evaluation, on real shards."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from met2net.cli import main as cli_main
from met2net.config import ConfigError, load_config
from met2net.data.convert import convert
from met2net.data.datasets import SplitTooShort, build_splits
from met2net.data.stats import read_stats
from met2net.evaluation.data import eval_data

GRID = (4, 8)
TRAIN, VAL, TEST = ["2010-01", "2010-08"], ["2010-09-01", "2010-12-31"], ["2011-01-01T00", "2011-03-31T18"]


def hours(a: str, b: str) -> tuple[np.datetime64, np.datetime64]:
    return np.datetime64(a, "h"), np.datetime64(b, "h")


def test_ranges_set_the_years_they_touch_and_may_share_a_year():
    cfg = load_config(None, [f"data.train={TRAIN}", f"data.val={VAL}", f"data.test={TEST}"])
    assert (cfg.data.train_years, cfg.data.val_years, cfg.data.test_years) == ([2010], [2010], [2011])
    assert cfg.data.period("train") == hours("2010-01-01T00", "2010-09-01T00")  # all of August
    assert cfg.data.period("test") == hours("2011-01-01T00", "2011-03-31T19")  # that hour
    assert cfg.data.period("val") == hours("2010-09-01T00", "2011-01-01T00")


def test_yaml_dates_are_read_as_iso_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: [2005-07-01, 2010-06-30]\n  val: [2010-07-01, 2010-12-31]\n  test: []\n")
    cfg = load_config(path)
    assert cfg.data.train == ["2005-07-01", "2010-06-30"] and cfg.data.train_years == list(range(2005, 2011))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.train=[2010-01, 2010-09-01]", "data.val=[2010-09, 2010-12]"], r"'data\.train/val' overlap \(2010-01"),
        (["data.train=[2010-01, 2010-06]", "data.val_years=[2010]"], r"'data\.train/val' overlap"),
        (["data.train=[2010-01]"], r"'data\.train' must be \[START, END\]"),
        (["data.val=[2010-13, 2011]"], r"'data\.val' \['2010-13', '2011'\]: not ISO 8601 dates"),
        (["data.test=[2012, 2011]"], r"'data\.test' \['2012', '2011'\] ends before it starts"),
    ],
)
def test_bad_ranges_are_refused_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Six-hourly 2010-2011 of one variable, converted."""
    root = tmp_path_factory.mktemp("date_splits")
    times = np.arange("2010-01-01T00", "2012-01-01T00", 6, dtype="datetime64[h]")
    values = np.random.default_rng(0).standard_normal((times.size, *GRID)).astype(np.float32)
    xr.Dataset(
        {"tas": (("time", "lat", "lon"), values)},
        coords={"time": times.astype("datetime64[ns]"), "lat": [-60.0, -20.0, 20.0, 60.0], "lon": np.arange(8) * 45.0},
    ).to_netcdf(root / "tas.nc")
    convert(root, cfg(root / "shards"), root / "shards", progress=False)
    return root / "shards", times, values


def cfg(path: Path, *overrides: str):
    return load_config(
        None,
        [
            "model.variables=[tas]",
            "model.in_frames=2",
            "model.out_frames=2",
            f"model.grid=[{GRID[0]},{GRID[1]}]",
            "model.hid_s=4",
            "model.hid_t=16",
            "model.num_heads=1",
            "data.variables=[{name: tas, file_glob: tas.nc, var: tas}]",
            "data.source=shards",
            f"data.path={path}",
            "data.step_hours=6",
            f"data.train={TRAIN}",
            f"data.val={VAL}",
            f"data.test={TEST}",
            *overrides,
        ],
    )


def window_times(ds) -> np.ndarray:
    return np.stack([ds.times(i) for i in range(len(ds))])


def test_statistics_training_and_evaluation_take_the_frames_of_their_ranges(shards):
    path, times, values = shards
    with h5py.File(path / "2010.h5") as f:
        assert f["time"].size == 365 * 4  # the shard holds the whole year; the ranges pick the frames
    assert cli_main(["data", "stats", str(path), "--train", *TRAIN]) == 0
    stats = read_stats(path)
    in_train = (times >= np.datetime64("2010-01-01T00")) & (times < np.datetime64("2010-09-01T00"))
    np.testing.assert_allclose(stats["mean"], [values[in_train].astype(np.float64).mean()], rtol=1e-12)
    assert stats["count"] == [int(in_train.sum()) * GRID[0] * GRID[1]] and stats["train_period"] == TRAIN

    splits = build_splits(cfg(path))
    for ds, first, last in (
        (splits.train, "2010-01-01T00", "2010-08-31T18"),
        (splits.val, "2010-09-01T00", "2010-12-31T18"),
        (splits.test, "2011-01-01T00", "2011-03-31T18"),
    ):
        t = window_times(ds)
        assert (t.min(), t.max()) == hours(first, last)
    assert len(splits.train) == int(in_train.sum()) - 3  # every window inside the range, none crossing it
    assert len(splits.val) == 122 * 4 - 3 and len(splits.test) == 90 * 4 - 3

    test = eval_data(cfg(path), np.zeros(1), np.ones(1), "test", leads=2)  # evaluation's windows: the test range
    t = window_times(test.windows)
    assert (t.min(), t.max(), len(test.windows)) == (
        np.datetime64("2011-01-01T00"),
        np.datetime64("2011-03-31T18"),
        357,
    )


def test_statistics_of_other_training_frames_are_refused_naming_the_command(shards):
    path, _, _ = shards
    assert cli_main(["data", "stats", str(path), "--train-years", "2010"]) == 0
    with pytest.raises(ConfigError, match=r"computed for train years \[2010\], but 'data\.train' is .*--train 2010-01"):
        build_splits(cfg(path))
    assert cli_main(["data", "stats", str(path), "--train", *TRAIN]) == 0
    with pytest.raises(ConfigError, match=r"computed for the period \['2010-01', '2010-08'\], but 'data\.train_years'"):
        build_splits(
            cfg(path, "data.train=[]", "data.train_years=[2010]", "data.val=[2011-01, 2011-01]", "data.test=[]")
        )


def test_a_range_shorter_than_a_window_is_split_too_short(shards):
    path, _, _ = shards
    assert cli_main(["data", "stats", str(path), "--train", *TRAIN]) == 0
    with pytest.raises(
        SplitTooShort,
        match=r"validation split \(data\.val \['2010-12-31T00', '2010-12-31T06'\]\) has 2 frames .*widen the range",
    ):
        build_splits(cfg(path, "data.val=[2010-12-31T00, 2010-12-31T06]"))
