"""Forecast scores as mergeable sums: every metric is a ratio of sums over forecasts, so scores from any split of
the samples (batches, ranks) merge by adding their sums, and the table is computed once at the end.

Shapes: forecasts and truth are (B, L, C, H, W) — batch, lead, variable, latitude, longitude — in physical units.
Per forecast, a *spatial mean* is taken over (H, W): plain (the Met²Net paper's convention) or latitude-weighted
(WeatherBench 2's). The state holds, per (model, lead, variable), the sums over forecasts of:

    se, ae           plain spatial means of (f − o)² and |f − o|
    se_w, ae_w, e_w  weighted spatial means of (f − o)², |f − o| and f − o
    fo_w, ff_w, oo_w weighted spatial means of f′·o′, f′² and o′², with anomalies f′ = f − c, o′ = o − c
                     against the climatology c

and the number of forecasts. Metrics (``scores``): mse = se/n, mae = ae/n, rmse = √(se/n); rmse_w = √(se_w/n)
(the square root after the mean over forecasts), mae_w = ae_w/n, bias = e_w/n; acc = Σfo_w / √(Σff_w · Σoo_w),
pooled over all forecasts and grid points; skill_rmse_w = 100 · (rmse_w − rmse_w of persistence) / rmse_w of
persistence (negative: better than persistence).
"""

from __future__ import annotations

import numpy as np

from met2net.errors import UserError

SUMS = ("se", "ae", "se_w", "ae_w", "e_w", "fo_w", "ff_w", "oo_w")
METRICS = ("mse", "mae", "rmse", "rmse_w", "mae_w", "bias", "acc", "skill_rmse_w")


def latitude_weights(lat: np.ndarray) -> np.ndarray:
    """Weights proportional to the area of each latitude row's cells — sin of the upper edge minus sin of the lower
    edge, edges halfway between rows and at most ±90° — normalised to mean 1 over the given rows. ``lat`` in
    degrees, ascending or descending, equally spaced or not."""
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2 or np.any(np.abs(lat) > 90):
        raise UserError(f"latitudes: expected at least 2 values in [-90, 90], got {lat.tolist()}")
    order = np.argsort(lat)
    s = lat[order]
    if np.any(np.diff(s) <= 0):
        raise UserError(f"latitudes: values repeat: {lat.tolist()}")
    mid = (s[1:] + s[:-1]) / 2
    lower = np.clip(np.r_[s[0] - (s[1] - s[0]) / 2, mid], -90, 90)
    upper = np.clip(np.r_[mid, s[-1] + (s[-1] - s[-2]) / 2], -90, 90)
    w = np.sin(np.deg2rad(upper)) - np.sin(np.deg2rad(lower))
    out = np.empty_like(w)
    out[order] = w
    return out / out.mean()


def score_sums(
    forecast: np.ndarray, truth: np.ndarray, clim: np.ndarray, weights: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """The sums of one batch of forecasts of one model: ((L, C, len(SUMS)) float64, number of forecasts).
    Computed in float64 in a fixed order, so the same batch gives the same bits wherever it is scored. ``valid``:
    (C, H, W) bool, the points that count (a missing-value policy filled the others: met2net/data/masks.py); the
    spatial means are then over each variable's valid points (weighted: Σ x·w / Σ w over them)."""
    f, o, c = (np.asarray(a, dtype=np.float64) for a in (forecast, truth, clim))
    if f.shape != o.shape or c.shape != o.shape or f.ndim != 5:
        raise ValueError(f"score_sums: expected equal (B, L, C, H, W) arrays, got {f.shape}, {o.shape}, {c.shape}")
    w = np.asarray(weights, dtype=np.float64)[:, None]  # (H, 1)
    if valid is None:

        def plain(x: np.ndarray) -> np.ndarray:
            return x.mean(axis=(-2, -1)).sum(axis=0)  # spatial mean per forecast, summed over the batch: (L, C)

        def weighted(x: np.ndarray) -> np.ndarray:
            return (x * w).mean(axis=(-2, -1)).sum(axis=0)

    else:
        v = np.asarray(valid, dtype=np.float64)  # (C, H, W)
        vw = v * w

        def plain(x: np.ndarray) -> np.ndarray:
            return (x * v).sum(axis=(-2, -1)).sum(axis=0) / v.sum(axis=(-2, -1))

        def weighted(x: np.ndarray) -> np.ndarray:
            return (x * vw).sum(axis=(-2, -1)).sum(axis=0) / vw.sum(axis=(-2, -1))

    err = f - o
    fa, oa = f - c, o - c
    sums = [plain(err**2), plain(np.abs(err)), weighted(err**2), weighted(np.abs(err)), weighted(err)]
    sums += [weighted(fa * oa), weighted(fa**2), weighted(oa**2)]
    return np.stack(sums, axis=-1), f.shape[0]


def scores(sums: np.ndarray, count: int, persistence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Metrics (each (L, C)) from one model's merged sums (L, C, len(SUMS)); ``persistence``: the persistence
    model's sums, for the skill score."""
    if count < 1:
        raise UserError("no forecasts were scored (the split has no windows)")
    s = {name: sums[..., i] for i, name in enumerate(SUMS)}
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "mse": s["se"] / count,
            "mae": s["ae"] / count,
            "rmse": np.sqrt(s["se"] / count),
            "rmse_w": np.sqrt(s["se_w"] / count),
            "mae_w": s["ae_w"] / count,
            "bias": s["e_w"] / count,
            "acc": s["fo_w"] / np.sqrt(s["ff_w"] * s["oo_w"]),  # NaN for the climatology itself (f′ = 0)
        }
        if persistence is not None:
            base = np.sqrt(persistence[..., SUMS.index("se_w")] / count)
            out["skill_rmse_w"] = 100.0 * (out["rmse_w"] - base) / base
    return out
