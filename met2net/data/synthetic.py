"""Built-in WeatherBench-style dataset: physically coupled hourly fields on a regular lat/lon grid.

Lets the whole pipeline (loading, training, evaluation) run without a download, while giving the
model's cross-variable attention real couplings to learn:

* wind (u10, v10) = zonal jet and trades (jet stronger in the winter hemisphere) + rotational waves
  (streamfunction) + divergent waves (velocity potential). Each wave is a low-order spherical-harmonic-like
  pattern whose phase drifts with periods of days, so winds are a smooth function of absolute time;
* t2m = latitude profile + seasonal cycle (opposite hemispheres, largest at the poles) + diurnal cycle in
  local solar time + an anomaly advected by the wind (semi-Lagrangian, bilinear, periodic in longitude,
  clamped at the poles), forced by meridional advection of the climatological gradient and by smooth
  noise and relaxed towards zero;
* r (1000 hPa) = 100·sigmoid(climatology − temperature anomaly + low-level convergence + advected noise);
* tcc = sigmoid of humidity and convergence;
* every output gets small white (uniform) noise, a stand-in for observation error.

The simulation steps hourly (dt = 1 h); ``step_hours=k`` keeps every k-th simulated hour from Jan 1 00:00 of
each year, so coarse output is exactly a subsample of hourly output. Each year is simulated on its own:
its advected anomalies start from random smooth fields drawn from ``(seed, year)`` and spin up for
``SPINUP_HOURS`` before Jan 1 00:00, and all its noise comes from that stream, so a year's values do not
depend on which other years are requested. Winds and the deterministic cycles depend only on absolute time
and ``seed`` and are continuous across years; the advected anomalies (so r, tcc and part of t2m) are not.
Output is held in memory: one hourly year at 32×64 is about 360 MB for the five variables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VARIABLES: dict[str, dict] = {
    "u10": {"long_name": "10m_u_component_of_wind", "var": "u10", "units": "m s**-1", "level": None},
    "v10": {"long_name": "10m_v_component_of_wind", "var": "v10", "units": "m s**-1", "level": None},
    "t2m": {"long_name": "2m_temperature", "var": "t2m", "units": "K", "level": None},
    "tcc": {"long_name": "total_cloud_cover", "var": "tcc", "units": "(0 - 1)", "level": None},
    "r": {"long_name": "relative_humidity", "var": "r", "units": "%", "level": 1000},
}

EARTH_RADIUS = 6.371e6
SPINUP_HOURS = 168
_EPOCH = np.datetime64("1970-01-01T00", "h")
_PSI_MODES = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (2, 1), (4, 2))
# cos^m·sin^j with j in {0, 1} is exactly P_{m+j}^m, so the convergence of these modes is analytic.
_CHI_MODES = ((1, 0), (2, 1), (3, 0), (4, 1))
_NOISE_MODES = tuple((m, j) for m in range(6) for j in range(4))
_TAU = np.array([120.0, 48.0])  # relaxation time (h) of the temperature and humidity anomalies
_SIGMA = np.array([3.0, 0.35])  # their stationary std from noise alone (K, logit units)
_CHUNK = 24  # hours computed in one vectorised batch; small enough for the working set to stay in cache


@dataclass
class SyntheticFields:
    """What a WeatherBench year directory holds: (time, lat, lon) float32 fields on a shared grid."""

    time: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    fields: dict[str, np.ndarray]


def latitudes(nlat: int) -> np.ndarray:
    """Centres of ``nlat`` equal bands, south to north (WeatherBench 5.625° rows for nlat=32)."""
    return -90.0 + (np.arange(nlat) + 0.5) * (180.0 / nlat)


def longitudes(nlon: int) -> np.ndarray:
    """``nlon`` equally spaced longitudes from 0°, 360° excluded."""
    return np.arange(nlon) * (360.0 / nlon)


def _harmonic(m: int, j: int, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y = cos^m·sin^j, dY/dφ and m·Y/cosφ (the latter regular at the poles)."""
    c, s = np.cos(phi), np.sin(phi)
    dy = np.zeros_like(phi)
    if m:
        dy -= m * c ** (m - 1) * s ** (j + 1)
    if j:
        dy += j * c ** (m + 1) * s ** (j - 1)
    return c**m * s**j, dy, m * c ** max(m - 1, 0) * s**j


def _wave_params(seed: int) -> dict[str, np.ndarray]:
    """Wave amplitudes (m/s), drift rates and phases: seed-only, so winds are independent of the year."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    k = len(_PSI_MODES) + len(_CHI_MODES)
    direction = np.where(rng.random(k) < 0.75, 1.0, -1.0)
    return {
        "amp": np.r_[rng.uniform(2.0, 3.5, len(_PSI_MODES)), rng.uniform(0.8, 1.5, len(_CHI_MODES))],
        "omega": direction * 2 * np.pi / (24 * rng.uniform(3, 10, k)),
        "phase": rng.uniform(0, 2 * np.pi, k),
        "jitter": rng.uniform(0.3, 1.0, k),
        "nu": 2 * np.pi / (24 * rng.uniform(4, 20, k)),
        "mu": 2 * np.pi / (24 * rng.uniform(5, 30, k)),
        "beta": rng.uniform(0, 2 * np.pi, (2, k)),
        "m": np.array([m for m, _ in _PSI_MODES + _CHI_MODES])[:, None],
    }


def _patterns(hours: np.ndarray, lam: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Longitude patterns (T, R, nlon) at absolute ``hours``; the rows of `_lat_factors` multiply them."""
    t = hours[:, None]
    theta = p["omega"] * t + p["phase"] + p["jitter"] * np.sin(p["nu"] * t + p["beta"][0])
    amp = (1 + 0.3 * np.sin(p["mu"] * t + p["beta"][1]))[..., None]
    phase = p["m"] * lam - theta[..., None]
    season = np.cos(2 * np.pi * (hours / 24 - 200) / 365.2425)  # +1 in northern summer
    local_time = 2 * np.pi * (hours - 15) / 24  # plus longitude = local solar time; warmest at 15:00
    rows = [
        amp * np.cos(phase),
        amp * np.sin(phase),
        np.ones((len(hours), 1, lam.size)),
        np.broadcast_to(season[:, None, None], (len(hours), 1, lam.size)),
        np.cos(lam + local_time[:, None, None]),
    ]
    return np.concatenate(rows, axis=1)


def _lat_factors(phi: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """(5·nlat, R) factors of u, v, normalised convergence, deterministic T and its diurnal part.

    Each wave's |u|, |v| is at most amp·1.3, so with the jet |wind| stays below 60 m/s by construction.
    """
    modes = _PSI_MODES + _CHI_MODES
    k_all = len(modes)
    out = np.zeros((5, phi.size, 2 * k_all + 3))
    fine = np.linspace(-np.pi / 2, np.pi / 2, 1441)[1:-1]
    conv_var = 0.0
    for k, (m, j) in enumerate(modes):
        fy, fdy, fmy = _harmonic(m, j, fine)
        a = amp[k] / max(np.abs(fdy).max(), np.abs(fmy).max())
        y, dy, my = _harmonic(m, j, phi)
        c, s = k, k_all + k  # columns multiplying cos Φ and sin Φ
        if k < len(_PSI_MODES):
            out[0, :, c], out[1, :, s] = -a * dy, -a * my
        else:
            lap = (m + j) * (m + j + 1) / EARTH_RADIUS
            out[0, :, s], out[1, :, c], out[2, :, c] = -a * my, a * dy, a * lap * y
            conv_var += 0.5 * np.average((a * lap * fy) ** 2, weights=np.cos(fine))
    lat = np.degrees(phi)
    jet = 10 * np.exp(-(((np.abs(lat) - 42) / 12) ** 2))
    out[0, :, -3] = jet - 6 * np.exp(-(((np.abs(lat) - 12) / 10) ** 2))
    out[3, :, -3] = 245 + 55 * np.cos(phi) ** 2
    out[0, :, -2] = -0.3 * np.sign(lat) * jet
    out[3, :, -2] = 16 * np.sin(phi)
    out[3:, :, -1] = 5 * np.cos(phi)
    out[2] /= np.sqrt(conv_var)
    return out.reshape(5 * phi.size, -1)


def _noise_basis(phi: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Smooth red-spectrum patterns; standard normal weights give unit mean-square noise fields."""
    rows, w = [], []
    for m, j in _NOISE_MODES:
        y = _harmonic(m, j, phi)[0][:, None]
        for f in (np.cos, np.sin)[: 1 + (m > 0)]:
            rows.append((y * f(m * lam)).ravel())
            w.append(1 / (1 + m))
    b = np.array(rows)
    b /= np.sqrt(np.average(b**2, axis=1, weights=np.repeat(np.cos(phi), lam.size)))[:, None]
    w = np.array(w)
    return b * (w / np.sqrt((w**2).sum()))[:, None]


def _departures(u: np.ndarray, v: np.ndarray, geo: dict) -> tuple[np.ndarray, np.ndarray]:
    """Semi-Lagrangian hour: flat indices (..., 4·npts) and bilinear weights (..., 4, npts) of the corners
    around each departure point; periodic in longitude, clamped at the poles."""
    nlat, nlon = geo["shape"]
    x = geo["j"] - u * geo["fx"]
    x -= nlon * np.floor(x / nlon)
    y = np.clip(geo["i"] - v * geo["fy"], 0, nlat - 1)
    i0 = np.minimum(y.astype(np.intp), nlat - 2)
    j0 = np.minimum(x.astype(np.intp), nlon - 1)
    wy, wx = y - i0, x - j0
    j1, k0 = geo["next"][j0], i0 * nlon
    idx = np.concatenate([k0 + j0, k0 + j1, k0 + nlon + j0, k0 + nlon + j1], axis=-1)
    w = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=-2)
    return idx, w


def generate(
    years: list[int],
    grid: tuple[int, int] = (32, 64),
    seed: int = 0,
    step_hours: int = 1,
    variables: list[str] | None = None,
    hours: int | None = None,
) -> SyntheticFields:
    """Simulate ``years`` on a ``grid`` = (nlat, nlon) grid; keep every ``step_hours``-th hour.

    ``hours`` truncates each year to its first ``hours`` hours (for quick tests); the kept part equals
    the start of the full year. ``seed`` must be non-negative.
    """
    names = list(VARIABLES) if variables is None else list(variables)
    if unknown := sorted(set(names) - set(VARIABLES)):
        raise ValueError(f"unknown variables {unknown}; choose from {list(VARIABLES)}")
    if not years or step_hours < 1 or min(grid) < 2 or (hours is not None and hours < 1):
        raise ValueError(
            f"need years, step_hours >= 1, grid >= 2x2, hours >= 1; got {years}, {step_hours}, {grid}, {hours}"
        )
    nlat, nlon = grid
    lat, lon = latitudes(nlat), longitudes(nlon)
    phi, lam = np.radians(lat), np.radians(lon)
    params = _wave_params(seed)
    factors, noise = _lat_factors(phi, params["amp"]), _noise_basis(phi, lam)
    dt = 3600.0
    geo = {
        "shape": (nlat, nlon),
        "i": np.repeat(np.arange(nlat, dtype=float), nlon),
        "j": np.tile(np.arange(nlon, dtype=float), nlat),
        "fx": np.repeat(dt / (EARTH_RADIUS * np.cos(phi) * (2 * np.pi / nlon)), nlon),
        "fy": dt / (EARTH_RADIUS * np.pi / nlat),
        "next": np.roll(np.arange(nlon), -1),
    }
    # Warm advection −v·∂T/∂y across the 55·cos²φ profile, halved to keep anomalies at realistic size.
    warm = np.repeat(0.5 * 55 * np.sin(2 * phi) * dt / EARTH_RADIUS, nlon)
    r_clim = 80 - 15 * np.exp(-(((np.abs(lat) - 25) / 10) ** 2))
    z_clim = np.repeat(np.log(r_clim / (100 - r_clim)), nlon)

    bounds = [(np.datetime64(f"{y + i}-01-01T00", "h") - _EPOCH).astype(int) for y in years for i in (0, 1)]
    starts = bounds[::2]
    lengths = [min(b - a, hours or b - a) for a, b in zip(starts, bounds[1::2], strict=True)]
    kept = [np.arange(0, n, step_hours) for n in lengths]
    time = np.concatenate([_EPOCH + s + k for s, k in zip(starts, kept, strict=True)]).astype("datetime64[h]")
    fields = {name: np.empty((len(time), nlat, nlon), np.float32) for name in names}
    decay, kick = 1 - 1 / _TAU[:, None], (_SIGMA * np.sqrt(2 / _TAU))[:, None]

    obs_scale = np.sqrt(12) * np.array([0.2, 0.2, 0.1, 0.05, 0.1], np.float32)[:, None]  # uniform noise std
    offset = 0
    for year, start, n_hours in zip(years, starts, lengths, strict=True):
        init_rng, forcing_rng, obs_rng = map(
            np.random.default_rng, np.random.SeedSequence(seed, spawn_key=(1, year)).spawn(3)
        )
        state = _SIGMA[:, None] * (init_rng.standard_normal((2, noise.shape[0])) @ noise)
        total = SPINUP_HOURS + n_hours
        for c0 in range(0, total, _CHUNK):
            c1 = min(c0 + _CHUNK, total)
            abs_hours = np.arange(start - SPINUP_HOURS + c0, start - SPINUP_HOURS + c1, dtype=float)
            det = (factors @ _patterns(abs_hours, lam, params)).reshape(c1 - c0, 5, -1)
            forcing = kick * (forcing_rng.standard_normal((c1 - c0, 2, noise.shape[0])) @ noise)
            forcing[:, 0] += warm * det[:, 1]
            obs = obs_scale * (obs_rng.random((c1 - c0, 5, noise.shape[1]), dtype=np.float32) - 0.5)
            idx, weights = _departures(det[:, 0], det[:, 1], geo)
            states = np.empty((c1 - c0, *state.shape))
            for n in range(c1 - c0):
                states[n] = state
                corners = state.take(idx[n], axis=1).reshape(2, 4, -1)
                state = (corners * weights[n]).sum(axis=1) * decay + forcing[n]
            h = np.arange(c0, c1) - SPINUP_HOURS
            sel = (h >= 0) & (h % step_hours == 0)
            if not sel.any():
                continue
            u, v, conv, t_det, t_diurnal = np.moveaxis(det[sel], 1, 0)
            (t_anom, q_anom), o = np.moveaxis(states[sel], 1, 0), np.moveaxis(obs[sel], 1, 0)
            r = 100 / (1 + np.exp(-(z_clim + q_anom - 0.12 * (t_anom + t_diurnal) + 0.6 * conv + o[3])))
            out = {
                "u10": u + o[0],
                "v10": v + o[1],
                "t2m": t_det + t_anom + o[2],
                "r": r,
                "tcc": 1 / (1 + np.exp(-((r - 75) / 8 + 0.8 * conv + o[4]))),
            }
            first = offset + h[sel][0] // step_hours
            for name in names:
                fields[name][first : first + sel.sum()] = out[name].reshape(-1, nlat, nlon)
        offset += len(range(0, n_hours, step_hours))
    return SyntheticFields(time=time, lat=lat, lon=lon, fields=fields)
