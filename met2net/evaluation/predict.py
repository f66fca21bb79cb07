"""`met2net predict`: forecasts from chosen initial times as a CF netCDF file that opens in xarray.

An initial time is the valid time of the last input frame; the inputs are the ``in_frames`` frames ending there,
read from the data the model was trained on (shards or the built-in data). The file holds one variable per
weather variable (physical units, CF standard names where one exists), dimensions (forecast_reference_time,
forecast_period, lat, lon), the valid ``time`` of every forecast as a 2-D coordinate, and global attributes that
name the model, checkpoint and config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import met2net
from met2net.data.netcdf import write_atomic
from met2net.errors import UserError
from met2net.evaluation.data import eval_data, normalise
from met2net.evaluation.evaluate import forecast
from met2net.evaluation.source import load_source

STANDARD_NAMES = {  # CF standard names of the WeatherBench variables met2net knows
    "u10": "eastward_wind",
    "v10": "northward_wind",
    "t2m": "air_temperature",
    "tcc": "cloud_area_fraction",
    "r": "relative_humidity",
    "t": "air_temperature",
    "z": "geopotential",
    "u": "eastward_wind",
    "v": "northward_wind",
    "q": "specific_humidity",
}
CF_UNITS = {"(0 - 1)": "1", "m s**-1": "m s-1", "m**2 s**-2": "m2 s-2", "kg kg**-1": "kg kg-1"}


def parse_time(text: str) -> np.datetime64:
    try:
        return np.datetime64(text, "h")
    except ValueError:
        raise UserError(f"--init {text!r}: expected an ISO time such as 2017-01-01T00 (UTC)") from None


def predict(source: str | Path, inits: list[str], overrides: list[str] = (), rollout: int = 1) -> xr.Dataset:
    """Forecasts of ``source`` from every time in ``inits`` (ISO strings), ``rollout`` × out_frames leads."""
    if rollout < 1:
        raise UserError(f"--rollout {rollout}: expected at least 1")
    if not inits:
        raise UserError("--init: give at least one initial time")
    loaded = load_source(source, overrides)
    cfg = loaded.cfg
    data = eval_data(cfg, loaded.mean, loaded.std, "test" if cfg.data.test_years else "val", cfg.model.out_frames)
    times = [parse_time(t) for t in inits]
    x = torch.stack([normalise(data.inputs_at(t), loaded.mean, loaded.std) for t in times])
    with torch.no_grad():
        y = forecast(loaded.model, x, rollout).double().numpy()
    y = (y * loaded.std[:, None, None] + loaded.mean[:, None, None]).astype(np.float32)
    if data.valid is not None:  # points a missing-value policy filled: no forecast there (met2net/data/masks.py)
        y[:, :, ~data.valid] = np.nan
    steps = np.arange(1, y.shape[1] + 1)
    init = np.array(times, dtype="datetime64[ns]")
    valid = data.step.after(np.array(times)[:, None], steps[None, :]).astype("datetime64[ns]")
    if data.step.monthly:  # a calendar month has no fixed length: the period counts months
        period = (steps * data.step.size, {"long_name": "forecast period in calendar months", "units": "months"})
    else:
        period = ((steps * data.step.size).astype("timedelta64[h]").astype("timedelta64[ns]"), {})
    coords = {
        "forecast_reference_time": ("forecast_reference_time", init, {"standard_name": "forecast_reference_time"}),
        "forecast_period": ("forecast_period", period[0], {"standard_name": "forecast_period", **period[1]}),
        "time": (("forecast_reference_time", "forecast_period"), valid, {"standard_name": "time"}),
        "lat": ("lat", data.lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", data.lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    variables = {}
    for c, name in enumerate(data.variables):
        attrs = {"units": CF_UNITS.get(data.units[c], data.units[c]), "long_name": data.long_names[c]}
        if name in STANDARD_NAMES:
            attrs["standard_name"] = STANDARD_NAMES[name]
        variables[name] = (("forecast_reference_time", "forecast_period", "lat", "lon"), y[:, :, c], attrs)
    return xr.Dataset(
        variables,
        coords,
        attrs={
            "Conventions": "CF-1.8",
            "title": "Met²Net forecasts",
            "source": f"met2net {met2net.__version__}: {loaded.description}",
            "checkpoint": str(loaded.description),
            "rollout_steps": rollout,
            "config": json.dumps(cfg.to_dict()),
            "history": "met2net predict",
        },
    )


def write_forecast(ds: xr.Dataset, out: str | Path) -> Path:
    """Written to a temporary file and renamed into place: an existing file is replaced only by a whole one."""
    return write_atomic(ds, out)
