import numpy as np
import pytest

from met2net.data.synthetic import VARIABLES, generate, latitudes, longitudes

GRID = (16, 32)


@pytest.fixture(scope="module")
def year():
    """A full (leap) year on a small grid: seasons, both hemispheres, every hour."""
    return generate([2012], grid=GRID, seed=3)


@pytest.fixture(scope="module")
def short():
    return generate([2011], grid=GRID, seed=0, hours=240)


def anomalies(x):
    return x - x.mean(axis=0)


def corr(a, b):
    a, b = anomalies(a.astype(np.float64)), anomalies(b.astype(np.float64))
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_variables_use_weatherbench_names():
    assert list(VARIABLES) == ["u10", "v10", "t2m", "tcc", "r"]
    assert VARIABLES["t2m"] == {"long_name": "2m_temperature", "var": "t2m", "units": "K", "level": None}
    assert VARIABLES["r"]["long_name"] == "relative_humidity" and VARIABLES["r"]["level"] == 1000
    assert VARIABLES["u10"]["long_name"] == "10m_u_component_of_wind"
    assert VARIABLES["tcc"]["units"] == "(0 - 1)"


def test_weatherbench_grid():
    lat, lon = latitudes(32), longitudes(64)
    np.testing.assert_allclose(lat, -87.1875 + 5.625 * np.arange(32))
    np.testing.assert_allclose(lon, 5.625 * np.arange(64))
    assert lat.dtype == lon.dtype == np.float64


def test_shapes_dtypes_and_time_axis(year):
    assert len(year.time) == 8784 and year.time.dtype == np.dtype("datetime64[h]")
    assert year.time[0] == np.datetime64("2012-01-01T00") and year.time[-1] == np.datetime64("2012-12-31T23")
    assert (np.diff(year.time) == np.timedelta64(1, "h")).all()
    np.testing.assert_array_equal(year.lat, latitudes(GRID[0]))
    np.testing.assert_array_equal(year.lon, longitudes(GRID[1]))
    assert list(year.fields) == list(VARIABLES)
    for x in year.fields.values():
        assert x.shape == (8784, *GRID) and x.dtype == np.float32


def test_non_leap_year_and_multi_year_concatenation():
    data = generate([2011, 2012], grid=(4, 8), step_hours=24, variables=["t2m"])
    assert len(data.time) == 365 + 366 and list(data.fields) == ["t2m"]
    assert data.time[365] == np.datetime64("2012-01-01T00")


def test_physical_ranges(year):
    f = year.fields
    for x in f.values():
        assert np.isfinite(x).all()
    assert 0 <= f["tcc"].min() and f["tcc"].max() <= 1
    assert 0 <= f["r"].min() and f["r"].max() <= 100
    assert 200 < f["t2m"].min() and f["t2m"].max() < 330
    assert np.abs(f["u10"]).max() < 60 and np.abs(f["v10"]).max() < 60
    for name in VARIABLES:
        assert f[name].std(axis=0).mean() > 0, name


def test_climate_is_plausible(year):
    t2m, lat = year.fields["t2m"], year.lat
    zonal = t2m.mean(axis=(0, 2))
    assert zonal[np.abs(lat).argmin()] > 290 and zonal[0] < 260 and zonal[-1] < 260
    jan, jul = t2m[: 31 * 24].mean(axis=(0, 2)), t2m[182 * 24 : 213 * 24].mean(axis=(0, 2))
    assert jul[-1] - jan[-1] > 15 and jan[0] - jul[0] > 15  # seasons are opposite in the hemispheres
    tropics = t2m[:, np.abs(lat) < 20].reshape(len(t2m), -1)
    local_hour = (year.time.astype(int)[:, None] + year.lon[None, :] / 15) % 24
    hour = np.broadcast_to(local_hour[:, None, :], t2m.shape)[:, np.abs(lat) < 20].reshape(len(t2m), -1)
    assert tropics[(hour > 13) & (hour < 17)].mean() > tropics[(hour > 1) & (hour < 5)].mean() + 5


def test_lag1_autocorrelation(short):
    for name, x in short.fields.items():
        a = anomalies(x.astype(np.float64))
        r1 = (a[1:] * a[:-1]).sum() / (a * a).sum()
        assert r1 > 0.9, (name, r1)


def test_cross_variable_coupling(year):
    f = year.fields
    assert corr(f["tcc"], f["r"]) > 0.6
    assert corr(f["r"], f["t2m"]) < -0.1


def test_deterministic_given_seed():
    a = generate([2011], grid=(8, 16), seed=5, hours=48)
    b = generate([2011], grid=(8, 16), seed=5, hours=48)
    c = generate([2011], grid=(8, 16), seed=6, hours=48)
    for name in VARIABLES:
        np.testing.assert_array_equal(a.fields[name], b.fields[name])
        assert not np.allclose(a.fields[name], c.fields[name]), name


def test_year_does_not_depend_on_other_years_requested():
    alone = generate([2011], grid=(8, 16), hours=72)
    pair = generate([2010, 2011], grid=(8, 16), hours=72)
    assert (pair.time[72:] == alone.time).all()
    for name in VARIABLES:
        np.testing.assert_array_equal(pair.fields[name][72:], alone.fields[name])
        assert not np.array_equal(pair.fields[name][:72], alone.fields[name])


def test_truncation_is_a_prefix_of_the_full_span(short):
    head = generate([2011], grid=GRID, seed=0, hours=30)
    for name in VARIABLES:
        np.testing.assert_array_equal(head.fields[name], short.fields[name][:30])


def test_step_hours_subsamples_hourly_output(short):
    six = generate([2011], grid=GRID, seed=0, step_hours=6, hours=240)
    assert (six.time == short.time[::6]).all() and len(six.time) == 40
    for name in VARIABLES:
        np.testing.assert_array_equal(six.fields[name], short.fields[name][::6])


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown variables"):
        generate([2011], variables=["z500"], hours=1)
    with pytest.raises(ValueError):
        generate([2011], step_hours=0, hours=1)
    with pytest.raises(ValueError):
        generate([], hours=1)
