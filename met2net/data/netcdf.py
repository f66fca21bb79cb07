"""WeatherBench-style netCDF trees: write the built-in synthetic dataset; read any regular lat/lon CF source.

Layout (as WeatherBench ships it): ``<long_name>/<long_name>_<year>_<res>deg.nc``, one folder per variable,
one file per year, dims ``time, lat, lon`` (``time, level, lat, lon`` for pressure-level variables). A source may
as well be a classic netCDF file or a Zarr store (a folder, as WeatherBench 2 ships ERA5) holding any number of years
and variables: sources are opened lazily (`open_source`) and read one year at a time (`open_variable`).

Grid convention after reading: latitude ascending (south→north), longitude ascending in [0, 360), dims exactly
``(time, lat, lon)``, float32. Sources may run latitude either way, use longitude −180..180 and give the axes any
of their common names (`COORD_ALIASES`) or names of their own (``data.coords``); `coordinate_names` and
`normalise_grid` map them all onto the one convention so downstream code never has to care which archive a file
came from.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from met2net.data import calendars
from met2net.data.atomic import atomic_write
from met2net.data.synthetic import VARIABLES, SyntheticFields, generate
from met2net.errors import UserError

TIME_ENCODING = {"units": "hours since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian", "dtype": "int64"}
LEVEL_DIMS = ("level", "pressure_level", "isobaricInhPa")
# Our axis → the names archives give it, most specific first: ERA5 (valid_time, latitude, isobaricInhPa,
# pressure_level), WeatherBench (time, lat, level), CMIP (plev, in Pa), netCDF from other tools (TIME, LAT, lev).
# The bare t/y/x come last and count only as coordinates with values (a projected y in metres fails the range check).
COORD_ALIASES = {
    "time": ("time", "valid_time", "TIME", "timestep", "t"),
    "lat": ("lat", "latitude", "LAT", "y"),
    "lon": ("lon", "longitude", "LON", "x"),
    "level": ("level", "pressure_level", "isobaricInhPa", "plev", "lev"),
}
_REQUIRED = ("time", "lat", "lon")
NETCDF_CHUNK_CACHE = 4 << 20  # bytes per variable while a source is open (see _open_netcdf)
ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json")  # what the root of a Zarr store holds: v2, v2 array, v3
_SPACING_RTOL = 1e-4


def resolution(nlat: int) -> str:
    """Grid spacing as WeatherBench spells it in file names: 180/nlat, shortest form ('5.625', '11.25')."""
    return np.format_float_positional(180.0 / nlat, trim="-")


def weatherbench_path(out_dir: str | Path, name: str, year: int, nlat: int) -> Path:
    """Where WeatherBench keeps ``year`` of the variable with short ``name``."""
    long_name = VARIABLES[name]["long_name"]
    return Path(out_dir) / long_name / f"{long_name}_{year}_{resolution(nlat)}deg.nc"


def _dataset(fields: SyntheticFields, name: str, seed: int) -> xr.Dataset:
    """One variable of one synthetic year as a CF dataset with WeatherBench's names, dims and attributes."""
    meta = VARIABLES[name]
    data, dims, coords = (
        fields.fields[name],
        ("time", "lat", "lon"),
        {
            "time": ("time", fields.time),
            "lat": ("lat", fields.lat, {"units": "degrees_north", "long_name": "latitude"}),
            "lon": ("lon", fields.lon, {"units": "degrees_east", "long_name": "longitude"}),
        },
    )
    if meta["level"] is not None:
        data, dims = data[:, None], ("time", "level", "lat", "lon")
        coords["level"] = (
            "level",
            np.array([meta["level"]], np.int32),
            {"units": "millibars", "long_name": "pressure_level"},
        )
    attrs = {"units": meta["units"], "long_name": meta["long_name"]}
    return xr.Dataset(
        {meta["var"]: (dims, data.astype(np.float32, copy=False), attrs)},
        coords=coords,
        attrs={"source": f"met2net.data.synthetic (seed={seed})", "Conventions": "CF-1.6"},
    )


def _encoding(ds: xr.Dataset) -> dict:
    """Integer hours for time (exact, as WeatherBench stores it); no fill values on grid coordinates."""
    enc: dict[str, dict] = {str(v): {"dtype": "float32"} for v in ds.data_vars if ds[v].dtype == np.float32}
    enc.update({c: {"_FillValue": None} for c in ("lat", "lon", "latitude", "longitude", *LEVEL_DIMS) if c in ds})
    if "time" in ds and np.issubdtype(ds["time"].dtype, np.datetime64):
        enc["time"] = dict(TIME_ENCODING)
    return enc


def write_atomic(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` to ``path`` via a temporary file in the same folder and `os.replace`.

    An interrupted run leaves either the previous file or none under the final name, never a truncated one,
    so a later run (or a reader globbing ``*.nc``) cannot mistake a partial write for data. The temporary
    name is unique per call (concurrent writers never share one) and is not pre-created, so the file gets
    the usual umask permissions rather than mkstemp's 0600.
    """
    return atomic_write(
        Path(path), lambda tmp: ds.to_netcdf(tmp, mode="w", format="NETCDF4", engine="netcdf4", encoding=_encoding(ds))
    )


def write_weatherbench_tree(
    out_dir: str | Path,
    years: list[int],
    grid: tuple[int, int] = (32, 64),
    seed: int = 0,
    variables: list[str] | None = None,
    hours: int | None = None,
) -> list[Path]:
    """Write the synthetic dataset as a WeatherBench tree under ``out_dir``; return the files, sorted.

    Years are generated one at a time (a year's values do not depend on the others), so memory stays at one
    year of fields whatever the number of years.
    """
    names = list(VARIABLES) if variables is None else list(variables)
    written = []
    for year in years:
        fields = generate([year], grid=grid, seed=seed, variables=names, hours=hours)
        for name in names:
            written.append(write_atomic(_dataset(fields, name, seed), weatherbench_path(out_dir, name, year, grid[0])))
    return sorted(written)


def is_zarr(path: Path) -> bool:
    """Is ``path`` the root of a Zarr store (a folder, as WeatherBench 2 ships ERA5)?"""
    return path.is_dir() and any((path / marker).is_file() for marker in ZARR_MARKERS)


def _in_store(path: Path, root: Path) -> bool:
    """Is ``path`` inside a Zarr store under ``root`` (a chunk, metadata or a group, not a source of its own)?"""
    return any(is_zarr(root / parent) for parent in path.relative_to(root).parents if parent != Path("."))


def find_files(root: str | Path, file_glob: str) -> list[Path]:
    """Sources under ``root`` matching ``file_glob`` (relative, may use ``**``): netCDF files and Zarr stores
    (folders), sorted so years come in order; the files inside a matched store are not sources of their own."""
    root = Path(root)
    if Path(file_glob).is_absolute():
        raise UserError(f"file_glob {file_glob!r} must be relative to the data root {root}; drop the leading '/'")
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist or is not a folder; check SRC of met2net data convert SRC "
            f"(run `met2net data synthetic` to create the built-in dataset)"
        )
    paths = [p for p in sorted(root.glob(file_glob)) if (is_zarr(p) or p.is_file()) and not _in_store(p, root)]
    if not paths:
        raise FileNotFoundError(
            f"no files match {file_glob!r} under {root}; check data.variables[].file_glob "
            f"(e.g. '2m_temperature/*.nc', or 'era5.zarr' for a Zarr store) and SRC of met2net data convert SRC"
        )
    return paths


def _source(da: xr.DataArray) -> str:
    return str(da.encoding.get("source", "<in-memory array>"))


def _check_regular(values: np.ndarray, axis: str, where: str) -> None:
    """Equal spacing is what lets the model treat the grid as an image; anything else must be regridded first."""
    if values.ndim != 1 or values.size < 2:
        raise UserError(
            f"{where}: {axis} must be a 1-D coordinate with at least 2 points, got shape "
            f"{values.shape}; regrid to a regular lat/lon grid first"
        )
    steps = np.diff(values.astype(np.float64))
    if steps[0] == 0 or not np.allclose(steps, steps[0], rtol=_SPACING_RTOL, atol=0):
        raise UserError(
            f"{where}: {axis} is not a regular grid (spacings from {steps.min():g} to {steps.max():g}"
            f" degrees, or duplicate points); regrid to equally spaced {axis} first"
        )


def layout(obj: xr.Dataset | xr.DataArray) -> str:
    """What a file holds, for errors that must let the user name its axes: coordinates and dimensions."""
    return f"coordinates {sorted(map(str, obj.coords))} and dimensions {dict(obj.sizes)}"


def coordinate_names(
    obj: xr.Dataset | xr.DataArray, where: str, coords: Mapping[str, str] | None = None, required: tuple = _REQUIRED
) -> dict[str, str]:
    """Our axis (time, lat, lon, level) → the name ``obj`` gives it: ``coords`` (``data.coords``) where it names
    the axis, else the first of `COORD_ALIASES` that is a dimension coordinate, else the first that is a
    coordinate. Raises ValueError naming ``where`` and listing what the file has when a ``required`` axis is
    not found or ``coords`` names something the file lacks."""
    coords = dict(coords or {})
    variables = obj.variables if isinstance(obj, xr.Dataset) else obj.coords
    found = {}
    for axis, aliases in COORD_ALIASES.items():
        if axis in coords:
            if coords[axis] not in variables:
                raise UserError(
                    f"{where}: data.coords.{axis} is {coords[axis]!r}, which it lacks; it has {layout(obj)}"
                )
            found[axis] = coords[axis]
            continue
        present = [a for a in aliases if a in obj.coords and a not in coords.values()]
        on_dims = [a for a in present if a in obj.dims]
        if present:
            found[axis] = (on_dims or present)[0]
    missing = [a for a in required if a not in found]
    if missing:
        tried = "; ".join(f"{a}: {'/'.join(COORD_ALIASES[a])}" for a in missing)
        example = ", ".join(f"{a}: <name>" for a in missing)
        raise UserError(
            f"{where}: no {', '.join(missing)} coordinate (looked for {tried}); it has {layout(obj)}; "
            f"name them in data.coords, e.g. data.coords: {{{example}}}"
        )
    return found


def with_our_names(obj: xr.Dataset | xr.DataArray, found: Mapping[str, str]) -> xr.Dataset | xr.DataArray:
    """``obj`` with the axes `coordinate_names` found renamed to ours; a coordinate that already bears one of our
    names but was not chosen (ERA5's scalar ``time`` beside its ``valid_time`` axis) is dropped."""
    renames = {name: axis for axis, name in found.items() if name != axis}
    clashes = [
        axis for axis in renames.values() if axis in (obj.variables if isinstance(obj, xr.Dataset) else obj.coords)
    ]
    return obj.drop_vars(clashes).rename(renames)


def normalise_grid(da: xr.DataArray) -> xr.DataArray:
    """Put ``da`` on the package's grid convention: lat ascending (south→north), lon ascending in [0, 360).

    Accepts the common names of the axes (`COORD_ALIASES`), latitude in either order and longitude in
    −180..180 or 0..360. Raises ValueError (naming the file and variable) for missing coordinates, latitudes
    outside ±90° or unequal spacing.
    """
    where = f"{_source(da)}, variable {da.name!r}"
    da = with_our_names(da, coordinate_names(da, where, required=()))
    missing = [c for c in ("lat", "lon") if c not in da.coords or c not in da.dims]
    if missing:
        raise UserError(
            f"{where}: no {'/'.join(missing)} coordinate (dims {da.dims}, coords {list(da.coords)}); "
            f"expected lat/lon or latitude/longitude dimension coordinates"
        )
    _check_regular(da["lat"].values, "lat", where)
    lat = da["lat"].values
    if lat.min() < -90 or lat.max() > 90:
        raise UserError(
            f"{where}: lat values span [{lat.min():g}, {lat.max():g}], outside [-90, 90], so they are not degrees "
            "of latitude (a projected y axis?); regrid to a regular lat/lon grid first, or name the latitude "
            "coordinate in data.coords"
        )
    lon = da["lon"].values % 360
    lon = np.where(lon >= 360, lon - 360, lon)
    _check_regular(np.sort(lon), "lon", where)
    da = da.assign_coords(lon=("lon", lon, da["lon"].attrs))
    return _ascending(_ascending(da, "lat"), "lon")


def _ascending(da: xr.DataArray, axis: str) -> xr.DataArray:
    """``da`` with ``axis`` ascending: as it is, a reversed view (north→south latitude), or a sorted copy (longitude
    from −180); views keep the memory of a converted year at one copy of the data."""
    steps = np.diff(da[axis].values)
    if (steps > 0).all():
        return da
    if (steps < 0).all():
        return da.isel({axis: slice(None, None, -1)})
    return da.sortby(axis)


def _select_level(da: xr.DataArray, level: int | None, path: Path, var: str) -> xr.DataArray:
    """Reduce a pressure-level variable to one level; a level given for a surface variable is a config error."""
    dim = next((d for d in LEVEL_DIMS if d in da.dims), None)
    if dim is None:
        scalar = next((da.coords[d] for d in LEVEL_DIMS if d in da.coords), None)
        if level is None or (scalar is not None and scalar.item() == level):
            return da
        raise UserError(
            f"{path}: variable {var!r} has no level dimension but level={level} was requested; "
            f"remove 'level' from its data.variables entry"
        )
    available = [v.item() for v in da[dim].values]
    if level is None:
        if len(available) == 1:
            return da.isel({dim: 0}, drop=True)
        raise UserError(f"{path}: variable {var!r} has levels {available}; set 'level' in its data.variables entry")
    if level not in available:
        raise UserError(f"{path}: variable {var!r} has no level {level}; available levels: {available}")
    return da.sel({dim: level}, drop=True)


def check_whole_hours(times: np.ndarray, where: str) -> None:
    """Refuse times that are not whole hours: shards store hours, and rounding would silently move data (HH:30
    read as HH:00) or fold sub-hourly steps onto each other."""
    t = np.asarray(times)
    if t.size == 0 or not np.issubdtype(t.dtype, np.datetime64):
        return
    minutes = np.unique(t.astype("datetime64[m]"))
    steps = np.diff(minutes).astype(np.int64)
    if steps.size and steps.min() < 60:
        i = int(np.argmin(steps))
        pair = minutes[i : i + 2]
        raise UserError(
            f"{where}: time step {steps.min()} min ({iso_minute(pair[0])} → {iso_minute(pair[1])}) is shorter than an "
            "hour; shards hold hourly or coarser frames, so keep the whole hours first "
            "(e.g. ds.sel(time=ds.time.dt.minute == 0)) or average to hours, then convert"
        )
    off = np.flatnonzero(t != t.astype("datetime64[h]"))
    if off.size:
        raise UserError(
            f"{where}: time {iso_minute(t[off[0]])} is not on a whole hour ({off.size} of {t.size} times are not); "
            "shards hold whole hours and met2net does not round times: relabel them in the file first "
            "(shift HH:30 to the hour the values stand for), then convert"
        )


def iso_minute(t: np.datetime64) -> str:
    """A time as ISO 8601 to the minute (to the second if it has seconds), for messages."""
    m = np.datetime64(t, "m")
    return str(np.datetime_as_string(m if m == t else np.datetime64(t, "s")))


def _in_hpa(ds: xr.Dataset) -> xr.Dataset:
    """Pressure levels in hPa, as data.variables[].level gives them (CMIP's ``plev`` is in Pa)."""
    if "level" in ds.coords and str(ds["level"].attrs.get("units", "")).strip() == "Pa":
        return ds.assign_coords(level=("level", ds["level"].values / 100.0, {**ds["level"].attrs, "units": "hPa"}))
    return ds


def open_source(path: Path) -> xr.Dataset:
    """A netCDF file (classic or netCDF4) or a Zarr store (a folder, v2 or v3) opened lazily: coordinates are read,
    a data variable only when a selection of it is loaded. Close it (``with``) when done."""
    try:
        if is_zarr(path):
            with warnings.catch_warnings():  # stores without consolidated metadata open fine, only slower
                warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated", RuntimeWarning)
                return xr.open_zarr(path, chunks=None)  # lazily indexed without dask
        return _open_netcdf(path)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(
            f"{path}: cannot be read as a netCDF file or a Zarr store ({type(err).__name__}: {err}); check that the "
            "file is complete, or narrow data.variables[].file_glob to the data files"
        ) from None


def _open_netcdf(path: Path) -> xr.Dataset:
    """``path`` through netCDF4 with a small chunk cache: a conversion reads each chunk once, so netCDF-C's default
    (64 MiB per variable) would only hold memory while the file stays open across years."""
    import netCDF4

    saved = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(NETCDF_CHUNK_CACHE)
    try:
        return xr.open_dataset(path, engine="netcdf4", chunks=None)
    finally:
        netCDF4.set_chunk_cache(*saved)


def source_times(ds: xr.Dataset, where: str) -> tuple[np.ndarray, str]:
    """The time axis of ``ds`` (axes already renamed to ours; a 1-D ``time`` dimension coordinate) as datetime64
    labels checked to be whole hours, and its calendar (met2net/data/calendars.py: noleap or 360-day times become
    the dates they name, or are refused naming ``where``)."""
    if ds["time"].dims != ("time",):
        raise UserError(
            f"{where}: its time coordinate has dimensions {ds['time'].dims}, not one time dimension; it has "
            f"{layout(ds)}; name the time dimension coordinate in data.coords"
        )
    times, calendar = calendars.decode(ds["time"].values, where)
    check_whole_hours(times, where)
    return times, calendar


def _positions(times: np.ndarray, year: int) -> slice | np.ndarray:
    """Where ``year``'s times are: a slice when they are contiguous (one read), else their indices."""
    idx = np.flatnonzero(times.astype("datetime64[Y]").astype(np.int64) + 1970 == year)
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class OpenSources:
    """Sources kept open across the years of one conversion, so a multi-year file is opened and its time axis decoded
    once rather than once per year (the data themselves are still read a year at a time). At most ``size`` are open
    at once, the least recently used closed first; use as a context manager, which closes them all."""

    def __init__(self, coords: Mapping[str, str] | None = None, size: int = 16):
        self.coords, self.size = dict(coords or {}), size
        self._open: OrderedDict[Path, tuple[xr.Dataset, np.ndarray, str]] = OrderedDict()
        # (path, var, level) → the variable of every time on our grid, not read: each year is a selection of it
        self.variables: dict[tuple[Path, str, int | None], xr.DataArray] = {}

    def get(self, path: Path) -> tuple[xr.Dataset, np.ndarray, str]:
        """``path`` opened with our axis names and levels in hPa, its times (datetime64) and calendar."""
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        raw = open_source(path)
        try:
            ds = _in_hpa(with_our_names(raw, coordinate_names(raw, str(path), self.coords)))
            times, calendar = source_times(ds, str(path))
            entry = (ds.assign_coords(time=("time", times, {"calendar": calendar})), times, calendar)
        except BaseException:
            raw.close()
            raise
        self._open[path] = entry
        while len(self._open) > self.size:
            self._forget(*self._open.popitem(last=False))
        return entry

    def _forget(self, path: Path, entry: tuple[xr.Dataset, np.ndarray, str]) -> None:
        entry[0].close()
        for key in [k for k in self.variables if k[0] == path]:
            del self.variables[key]

    def close(self) -> None:
        while self._open:
            self._forget(*self._open.popitem())

    def __enter__(self) -> OpenSources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_one(
    path: Path,
    var: str,
    level: int | None,
    coords: Mapping[str, str] | None = None,
    year: int | None = None,
    sources: OpenSources | None = None,
    lazy: bool = False,
) -> xr.DataArray:
    """One source's ``var`` (of ``year`` only, when given) in memory on the normalised grid. Only the selected
    times are read: a multi-year file costs one year's memory per call. The source is taken from ``sources`` (kept
    open for the next year), or opened and closed before returning. ``lazy`` (with ``sources``): nothing is read
    yet, and the values keep the file's dtype; the caller reads them in blocks of times."""
    if sources is None:
        with OpenSources(coords, size=1) as once:
            return _read_one(path, var, level, coords, year, once)
    ds, times, _ = sources.get(path)
    if not lazy:
        return _on_our_grid(ds, times, path, var, level, year, lazy=False)
    key = (path, var, level)  # lazy: put on our grid once, not once per year; then the year's times are selected
    if key not in sources.variables:
        sources.variables[key] = _on_our_grid(ds, times, path, var, level, None, lazy=True)
    whole = sources.variables[key]
    return whole if year is None else whole.isel(time=_positions(times, year))


def _on_our_grid(
    ds: xr.Dataset, times: np.ndarray, path: Path, var: str, level: int | None, year: int | None, lazy: bool
) -> xr.DataArray:
    """``_read_one``'s work on the opened source ``ds`` (its decoded ``times``)."""
    if var not in ds.data_vars:
        raise UserError(
            f"{path}: no variable {var!r}; it holds {sorted(map(str, ds.data_vars))}; "
            f"fix 'var' in its data.variables entry"
        )
    da = ds[var]
    if year is not None:
        da = da.isel(time=_positions(times, year))
    da = _select_level(da, level, path, var)
    if set(da.dims) != {"time", "lat", "lon"}:
        raise UserError(
            f"{path}: variable {var!r} has dims {da.dims} after level selection; "
            f"expected exactly time, lat, lon (select or drop the extra dimensions first)"
        )
    if not lazy:
        da = da.load()  # the selected times only, in the file's own order and dtype
    da.encoding["source"] = str(path)
    da = normalise_grid(da).transpose("time", "lat", "lon")
    return da if lazy else da.astype(np.float32, copy=False)


def _check_same_grid(parts: list[xr.DataArray], paths: list[Path], var: str) -> None:
    for part, path in zip(parts[1:], paths[1:]):
        for axis in ("lat", "lon"):
            if part[axis].shape != parts[0][axis].shape or not np.allclose(part[axis], parts[0][axis]):
                raise UserError(
                    f"{path}: variable {var!r} has a different {axis} grid from {paths[0]}; "
                    f"all files of one variable must share a grid"
                )


def open_parts(
    paths: list[Path],
    var: str,
    level: int | None,
    coords: Mapping[str, str] | None,
    year: int,
    sources: OpenSources,
) -> list[xr.DataArray]:
    """``var``'s ``year`` from sources kept open, as (time, lat, lon) parts in time order, none of them read yet, in
    the files' dtype: a converter reads them a block of times at a time, so a year that spans several files (monthly
    files of ERA5) is never held whole either. The checks are `open_variable`'s; where the files' times interleave,
    the year is read and sorted as `open_variable` does and is the one part."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise FileNotFoundError(f"no files given for variable {var!r}; check its data.variables[].file_glob")
    parts = [_read_one(p, var, level, coords, year, sources, lazy=True) for p in paths]
    _check_same_grid(parts, paths, var)
    _check_calendars(parts, paths, var)
    parts = sorted((part for part in parts if part.sizes["time"]), key=lambda part: part["time"].values[0])
    if parts and (np.diff(np.concatenate([part["time"].values for part in parts])) > np.timedelta64(0)).all():
        return parts
    return [open_variable(paths, var, level, coords, year, sources)]


def _check_calendars(parts: list[xr.DataArray], paths: list[Path], var: str) -> None:
    used = {str(p): part["time"].attrs["calendar"] for p, part in zip(paths, parts)}
    if len(set(used.values())) > 1:
        raise UserError(
            f"variable {var!r}: its files use different calendars ({used}); convert them to one calendar first"
        )


def open_variable(
    paths: list[Path],
    var: str,
    level: int | None = None,
    coords: Mapping[str, str] | None = None,
    year: int | None = None,
    sources: OpenSources | None = None,
) -> xr.DataArray:
    """Read ``var`` from sources (netCDF files or Zarr stores) into one (time, lat, lon) float32 array, time
    ascending; ``coords``: the files' names of our axes where the common ones do not fit (``data.coords``); ``year``:
    read that year's times only (the rest of a multi-year source is never read).

    Loads eagerly (`open_parts` leaves a converter's sources unread); without ``sources`` (kept open by the caller)
    each source is closed before returning, so no handles outlive the call (safe with forked data-loader workers).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise FileNotFoundError(f"no files given for variable {var!r}; check its data.variables[].file_glob")
    parts = [_read_one(p, var, level, coords, year, sources) for p in paths]
    _check_same_grid(parts, paths, var)
    _check_calendars(parts, paths, var)
    da = (
        xr.concat(parts, dim="time", coords="minimal", compat="override", join="override", combine_attrs="override")
        if len(parts) > 1
        else parts[0]
    )
    if not da.indexes["time"].is_monotonic_increasing:
        da = da.sortby("time")
    if da.indexes["time"].has_duplicates:
        dup = da.indexes["time"][da.indexes["time"].duplicated()][0]
        raise UserError(
            f"variable {var!r}: time {dup} appears more than once across {[str(p) for p in paths]}; "
            f"the files overlap, so remove the duplicates or narrow file_glob"
        )
    return da


@functools.cache
def hdf5_from_two_threads_is_safe() -> bool:
    """Whether netCDF4 (reading a conversion's sources) and h5py (writing its shards) may call HDF5 from two threads
    at once: yes when each carries its own copy of the library (pip's wheels do), or when the one they share was
    built thread-safe (``H5is_library_threadsafe``); no when they share one built without it (an HPC module's HDF5
    with h5py and netCDF4 built against it), and no when this cannot be told (no ``/proc/self/maps``): then the
    conversion reads and writes on one thread (met2net/data/convert.py)."""
    import h5py  # noqa: F401 - both loaded, so that their libraries are mapped
    import netCDF4  # noqa: F401

    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    paths = {os.path.realpath(line.split()[5]) for line in lines if len(line.split()) >= 6}
    hdf5 = sorted(p for p in paths if _is_hdf5_library(os.path.basename(p)))
    if len(hdf5) != 1:
        return len(hdf5) > 1
    try:
        query = ctypes.CDLL(hdf5[0]).H5is_library_threadsafe
    except (OSError, AttributeError):  # HDF5 before 1.10.1 cannot say
        return False
    safe = ctypes.c_bool(False)
    return query(ctypes.byref(safe)) >= 0 and safe.value


def _is_hdf5_library(name: str) -> bool:
    """The HDF5 library's file name, not its high-level part's: ``libhdf5.so.310``, Debian's
    ``libhdf5_serial.so.103`` or ``libhdf5_openmpi.so.103``, a wheel's renamed copy ``libhdf5-9e18f0c6.so.320.0.0``."""
    return name.startswith("libhdf5") and "_hl" not in name and ".so" in name
