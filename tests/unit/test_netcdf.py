import os

import netCDF4
import numpy as np
import pytest
import xarray as xr

from met2net.data import atomic
from met2net.data.netcdf import (
    find_files,
    normalise_grid,
    open_variable,
    resolution,
    write_atomic,
    write_weatherbench_tree,
)
from met2net.data.synthetic import VARIABLES, generate

YEARS = [2011, 2012]
GRID = (16, 32)
HOURS = 48
LONG = {name: meta["long_name"] for name, meta in VARIABLES.items()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb")
    return root, write_weatherbench_tree(root, YEARS, grid=GRID, seed=0, hours=HOURS)


@pytest.fixture(scope="module")
def ref():
    return generate(YEARS, grid=GRID, seed=0, hours=HOURS)


def paths_of(root, name):
    return find_files(root, f"{LONG[name]}/*.nc")


def test_resolution_matches_weatherbench():
    assert [resolution(n) for n in (16, 32, 64, 128)] == ["11.25", "5.625", "2.8125", "1.40625"]


def test_tree_uses_weatherbench_names(tree):
    root, written = tree
    expected = sorted(root / LONG[n] / f"{LONG[n]}_{y}_11.25deg.nc" for n in VARIABLES for y in YEARS)
    assert written == expected
    assert sorted(p for p in root.rglob("*") if p.is_file()) == expected


def test_files_get_umask_permissions_not_tempfile_0600(tree):
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in tree[1]} == {0o666 & ~umask}


@pytest.mark.parametrize("name", list(VARIABLES))
def test_file_contents_round_trip(tree, ref, name):
    root, _ = tree
    for i, year in enumerate(YEARS):
        path = root / LONG[name] / f"{LONG[name]}_{year}_11.25deg.nc"
        with xr.open_dataset(path) as ds:
            da = ds[name]
            surface = ("time", "lat", "lon")
            assert da.dims == (surface if name != "r" else ("time", "level", "lat", "lon"))
            assert da.dtype == np.float32
            assert da.attrs["units"] == VARIABLES[name]["units"]
            assert da.attrs["long_name"] == LONG[name]
            assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
            np.testing.assert_array_equal(ds["lat"], ref.lat)
            np.testing.assert_array_equal(ds["lon"], ref.lon)
            sl = slice(i * HOURS, (i + 1) * HOURS)
            np.testing.assert_array_equal(ds["time"].values.astype("datetime64[h]"), ref.time[sl])
            values = da.values
            if name == "r":
                assert ds["level"].values.tolist() == [1000]
                values = values[:, 0]
            np.testing.assert_array_equal(values, ref.fields[name][sl])


def test_time_is_cf_encoded_integer_hours(tree):
    root, _ = tree
    with netCDF4.Dataset(root / "2m_temperature" / "2m_temperature_2012_11.25deg.nc") as nc:
        time = nc["time"]
        assert time.units.startswith("hours since") and time.calendar == "proleptic_gregorian"
        assert time.dtype == np.int64
        assert np.all(np.diff(time[:]) == 1)


@pytest.mark.parametrize("name", list(VARIABLES))
def test_open_variable_concatenates_years(tree, ref, name):
    root, _ = tree
    da = open_variable(paths_of(root, name), name, level=VARIABLES[name]["level"])
    assert da.dims == ("time", "lat", "lon") and da.dtype == np.float32
    np.testing.assert_array_equal(da["time"].values.astype("datetime64[h]"), ref.time)
    np.testing.assert_array_equal(da["lat"], ref.lat)
    np.testing.assert_array_equal(da["lon"], ref.lon)
    np.testing.assert_array_equal(da.values, ref.fields[name])


def test_single_level_is_taken_when_no_level_given(tree, ref):
    root, _ = tree
    np.testing.assert_array_equal(open_variable(paths_of(root, "r"), "r").values, ref.fields["r"])


def test_missing_level_names_level_and_file(tree):
    root, _ = tree
    paths = paths_of(root, "r")
    with pytest.raises(ValueError, match=r"relative_humidity_2011_11\.25deg\.nc.*level 850.*\[1000\]"):
        open_variable(paths, "r", level=850)


def test_level_on_surface_variable_and_missing_variable_are_errors(tree):
    root, _ = tree
    paths = paths_of(root, "t2m")
    with pytest.raises(ValueError, match=r"2m_temperature_2011.*'t2m'.*no level dimension"):
        open_variable(paths, "t2m", level=1000)
    with pytest.raises(ValueError, match=r"2m_temperature_2011.*no variable 'z'.*t2m"):
        open_variable(paths, "z")


def flipped_and_rolled(ds):
    """The same data as ERA5 ships it: north→south, longitude −180..180, long coordinate names."""
    ds = ds.isel(lat=slice(None, None, -1)).roll(lon=ds.sizes["lon"] // 2, roll_coords=True)
    ds = ds.assign_coords(lon=xr.where(ds["lon"] >= 180, ds["lon"] - 360, ds["lon"]))
    return ds.rename({"lat": "latitude", "lon": "longitude"})


def test_normalise_grid_undoes_flip_and_roll(tree, tmp_path):
    root, _ = tree
    original = open_variable(paths_of(root, "t2m"), "t2m")
    odd = []
    for path in paths_of(root, "t2m"):
        with xr.open_dataset(path) as ds:
            ds = flipped_and_rolled(ds.load())
        assert ds["latitude"][0] > 0 and ds["longitude"].min() < 0
        odd.append(write_atomic(ds, tmp_path / path.name))
    back = open_variable(odd, "t2m")
    xr.testing.assert_equal(back, original)
    np.testing.assert_array_equal(back["lon"], original["lon"])
    np.testing.assert_array_equal(back["lat"], original["lat"])


def test_normalise_grid_in_memory(ref):
    da = xr.DataArray(
        ref.fields["u10"],
        dims=("time", "lat", "lon"),
        name="u10",
        coords={"time": ref.time, "lat": ref.lat, "lon": ref.lon},
    )
    odd = flipped_and_rolled(da.to_dataset())["u10"]
    xr.testing.assert_equal(normalise_grid(odd), da)


def test_irregular_or_missing_grid_is_an_error(ref):
    lat = ref.lat.copy()
    lat[3] += 1.0
    da = xr.DataArray(
        ref.fields["t2m"][:2],
        dims=("time", "lat", "lon"),
        name="t2m",
        coords={"time": ref.time[:2], "lat": lat, "lon": ref.lon},
    )
    with pytest.raises(ValueError, match=r"'t2m'.*lat is not a regular grid"):
        normalise_grid(da)
    with pytest.raises(ValueError, match=r"'t2m'.*no lat/lon coordinate"):
        normalise_grid(xr.DataArray(ref.fields["t2m"][:2], dims=("time", "y", "x"), name="t2m"))
    with pytest.raises(ValueError, match=r"lon is not a regular grid"):
        normalise_grid(da.assign_coords(lat=ref.lat, lon=np.r_[ref.lon[:-1], 359.0]))


def test_find_files(tree, tmp_path):
    root, _ = tree
    assert [p.name for p in find_files(root, "2m_temperature/*.nc")] == [
        "2m_temperature_2011_11.25deg.nc",
        "2m_temperature_2012_11.25deg.nc",
    ]
    with pytest.raises(FileNotFoundError) as err:
        find_files(tmp_path, "geopotential/*.nc")
    assert str(tmp_path) in str(err.value) and "geopotential/*.nc" in str(err.value)


def failing_to_netcdf(original):
    def write_then_fail(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        raise RuntimeError("interrupted")

    return write_then_fail


def failing_replace(*args):
    raise RuntimeError("interrupted")


@pytest.mark.parametrize("where", ["write", "rename"])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, where):
    if where == "write":
        monkeypatch.setattr(xr.Dataset, "to_netcdf", failing_to_netcdf(xr.Dataset.to_netcdf))
    else:
        monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_weatherbench_tree(tmp_path, [2011], grid=GRID, variables=["t2m"], hours=2)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_interrupted_overwrite_keeps_previous_file(tmp_path, monkeypatch):
    [path] = write_weatherbench_tree(tmp_path, [2011], grid=GRID, variables=["t2m"], hours=2)
    before = path.read_bytes()
    monkeypatch.setattr(xr.Dataset, "to_netcdf", failing_to_netcdf(xr.Dataset.to_netcdf))
    with pytest.raises(RuntimeError, match="interrupted"):
        write_weatherbench_tree(tmp_path, [2011], grid=GRID, variables=["t2m"], hours=2)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_cli_writes_the_tree(tmp_path, capsys):
    from met2net.cli import main

    assert main(["data", "synthetic", str(tmp_path), "--years", "2010-2011", "--grid", "8x16"]) == 0
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.nc"))
    assert len(names) == 10 and "2m_temperature/2m_temperature_2011_22.5deg.nc" in names
    assert "wrote 10 netCDF files for 2 years" in capsys.readouterr().out
