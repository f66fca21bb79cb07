"""The projection model's three numbers fitted from measured steps, and its error on steps left out of the fit.

Without overlap the model is linear in its unknowns: step = b · t_c + (v·S) · (1/B) + k · α, with b samples per
rank, v and k the ring factors of the point's world size and ZeRO stage (``projection.ring_factors``), S the
communicated bytes, t_c the compute time per sample, B the bandwidth and α the latency per ring step. A least-squares
fit of (t_c, 1/B, α) to measured steps gives an *effective* link: whatever overlap and protocol overheads the
measurements had are folded into B and α, so points should come from one link regime (all within a node, or all
across nodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from met2net.errors import UserError
from met2net.scaling.projection import GB, Link, ring_factors
from met2net.scaling.table import read_rows


@dataclass(frozen=True)
class Measured:
    """One measured configuration: its median step time in seconds."""

    world_size: int
    zero_stage: int
    batch_per_rank: int
    parameters: int
    bytes_per_element: int
    step_s: float


@dataclass(frozen=True)
class Calibration:
    compute_s_per_sample: float
    link: Link

    def predict(self, point: Measured) -> float:
        """The step time the fitted model gives ``point``."""
        b, volume, steps = _row(point)
        return (
            b * self.compute_s_per_sample
            + volume / (self.link.bandwidth_gbs * GB)
            + steps * self.link.latency_us * 1e-6
        )


def _row(point: Measured) -> tuple[float, float, float]:
    """The point's coefficients of (t_c, 1/B, α): samples per rank, ring bytes, ring steps."""
    v, k = ring_factors(point.world_size, point.zero_stage)
    return float(point.batch_per_rank), v * point.parameters * point.bytes_per_element, float(k)


def calibrate(points: Sequence[Measured], latency_us: float | None = None) -> Calibration:
    """Least-squares t_c, B and α from ``points``; with ``latency_us`` given, α is fixed and only t_c and B fitted
    (two world sizes, 1 and 2, cannot tell latency from bandwidth: their ring bytes and steps are proportional).

    A fitted latency below zero (noise, when latency is negligible) is set to zero and t_c, B refitted."""
    a = np.array([_row(p) for p in points], dtype=np.float64)
    y = np.array([p.step_s for p in points], dtype=np.float64)
    if latency_us is None:
        t_c, inv_b, alpha = _solve(a, y, ("compute per sample", "bandwidth", "latency"))
        if alpha < 0:
            return calibrate(points, latency_us=0.0)
        latency = alpha * 1e6
    else:
        t_c, inv_b = _solve(a[:, :2], y - a[:, 2] * latency_us * 1e-6, ("compute per sample", "bandwidth"))
        latency = latency_us
    if not t_c > 0 or not inv_b > 0:
        raise UserError(
            f"the measured steps do not fit the model (compute per sample {t_c:.3g} s, 1/bandwidth {inv_b:.3g} s/B): "
            "communication must grow with world size and compute with the batch"
        )
    return Calibration(t_c, Link(1 / inv_b / GB, latency))


def _solve(a: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """``a x ≈ y`` in the least-squares sense, columns scaled to 1 first (bytes are ~10⁸, counts ~10)."""
    scale = np.abs(a).max(axis=0)
    if np.any(scale == 0) or np.linalg.matrix_rank(a / scale) < a.shape[1]:
        raise UserError(
            f"{len(y)} measured point(s) cannot determine {', '.join(names)}: vary the batch per rank and use at "
            "least three world sizes (or give the latency)"
        )
    x, *_ = np.linalg.lstsq(a / scale, y, rcond=None)
    return x / scale


def validate(calibration: Calibration, held_out: Sequence[Measured]) -> list[float]:
    """Relative prediction errors (predicted − measured) / measured of points the fit did not see."""
    return [(calibration.predict(p) - p.step_s) / p.step_s for p in held_out]


COLUMNS = ("world_size", "zero_stage", "batch_per_rank", "parameters", "bytes_per_element", "step_s")


def read_measured(path: str) -> list[Measured]:
    """Measured points from a CSV file with a header naming ``COLUMNS`` (other columns are ignored)."""
    rows = read_rows(path, COLUMNS)
    try:
        return [Measured(*(int(r[c]) for c in COLUMNS[:-1]), float(r["step_s"])) for r in rows]
    except ValueError as e:
        raise UserError(f"{path}: {e}") from e
