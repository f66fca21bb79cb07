"""The projection model's three numbers fitted from measured steps, and its error on steps left out of the fit.

Without overlap the model is linear in its unknowns: step = b · t_c + (v·S) · (1/B) + k · α, with b samples per
rank, v and k the ring factors of the point's world size and ZeRO stage (``projection.ring_factors``), S the
communicated bytes, t_c the compute time per sample, B the bandwidth and α the latency per ring step. A least-squares
fit of (t_c, 1/B, α) to measured steps gives an *effective* link: whatever overlap and protocol overheads the
measurements had are folded into B and α, so points should come from one link regime (all within a node, or all
across nodes).

A sweep's ``results.csv`` rows are measured points too (``from_rows``): b = micro-batch × accumulation, S = the trained
parameters (the gradients every stage communicates) × 4 bytes, in bf16 too (met2net's bf16 is autocast around the
forward: weights and gradients stay fp32, ``training/precision.py``). ``leave_one_out`` gives each point
the error of the model fitted to all the others: with the handful of points a sweep on a few ranks has, every point is
held out once rather than a few being set aside for good.
"""

from __future__ import annotations

import statistics
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
    name: str = ""


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


@dataclass(frozen=True)
class HeldOut:
    """A point and the step the model fitted without it predicts; ``predicted_s`` None when the other points alone
    cannot determine the model (the reason in ``why``)."""

    point: Measured
    predicted_s: float | None
    why: str = ""

    @property
    def error(self) -> float | None:
        """Signed relative error (predicted − measured) / measured."""
        return None if self.predicted_s is None else (self.predicted_s - self.point.step_s) / self.point.step_s


def leave_one_out(points: Sequence[Measured], latency_us: float | None = None) -> list[HeldOut]:
    """Every point predicted by the model ``calibrate`` fits to the others: a held-out error for each measured point."""
    held = []
    for i, p in enumerate(points):
        try:
            fit = calibrate([q for j, q in enumerate(points) if j != i], latency_us)
        except UserError as e:
            held.append(HeldOut(p, None, str(e)))
        else:
            held.append(HeldOut(p, fit.predict(p)))
    return held


def default_latency(points: Sequence[Measured], latency_us: float | None) -> float | None:
    """``latency_us`` when given; else 0 when the points have fewer than three world sizes (1 and 2 ranks cannot tell
    latency from bandwidth, so it is folded into the effective bandwidth), else None: fitted."""
    if latency_us is not None or len({p.world_size for p in points}) >= 3:
        return latency_us
    return 0.0


# a precision's communicated gradient element: fp32 in both (bf16 is autocast; DeepSpeed's own bf16 mode is off)
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 4}
SWEEP_COLUMNS = ("world_size", "zero_stage", "micro_batch", "trainable_parameters", "step_s")


def from_rows(rows: Sequence[dict[str, str]]) -> list[Measured]:
    """Measured points from a sweep's results.csv rows (``met2net scale run``): the rows with status ok (or none);
    b = micro_batch × accumulation, S = trainable_parameters × the precision's bytes (``BYTES_PER_ELEMENT``)."""
    points = []
    for r in rows:
        if (r.get("status") or "ok") != "ok":
            continue
        missing = [c for c in SWEEP_COLUMNS if not r.get(c)]
        if missing:
            raise UserError(f"a results.csv row ({r.get('name') or 'unnamed'}) lacks {', '.join(missing)}")
        precision = r.get("precision") or "fp32"
        if precision not in BYTES_PER_ELEMENT:
            raise UserError(f"{r.get('name')}: precision {precision!r} is not one of {', '.join(BYTES_PER_ELEMENT)}")
        try:
            points.append(
                Measured(
                    int(r["world_size"]),
                    int(r["zero_stage"]),
                    int(r["micro_batch"]) * int(r.get("accumulation") or 1),
                    int(r["trainable_parameters"]),
                    BYTES_PER_ELEMENT[precision],
                    float(r["step_s"]),
                    r.get("name") or "",
                )
            )
        except ValueError as e:
            raise UserError(f"{r.get('name')}: {e}") from e
    return points


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


def markdown(points: Sequence[Measured], latency_us: float | None = None) -> str:
    """The report's calibration section: the model fitted to every point, then each point's held-out error. A sweep
    whose points cannot determine the model gets the reason instead of numbers."""
    latency = default_latency(points, latency_us)
    try:
        fit = calibrate(points, latency)
    except UserError as e:
        return f"The projection model could not be calibrated from these points: {e}."
    if latency_us is not None:
        alpha = f"α = {fit.link.latency_us:.4g} µs per ring step (given)"
    elif latency is not None:
        alpha = (
            "α = 0 (fixed: with fewer than three world sizes latency cannot be told from bandwidth, so the "
            "effective bandwidth holds both)"
        )
    else:
        alpha = f"α = {fit.link.latency_us:.4g} µs per ring step"
    head = (
        f"step = b · t_c + v·S / B + k · α (docs/scaling.md) fitted by least squares to the {len(points)} measured "
        f"points: t_c = {fit.compute_s_per_sample * 1e3:.4g} ms per sample, effective bandwidth B = "
        f"{fit.link.bandwidth_gbs:.4g} GB/s, {alpha}. Held out: each point predicted by the model fitted to the "
        f"other {len(points) - 1}; error = (predicted − measured) / measured.\n\n"
        "| point | ranks | ZeRO | samples per rank | measured step (ms) | predicted (ms) | error |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    held = leave_one_out(points, latency)
    rows = [
        f"| {h.point.name or '—'} | {h.point.world_size} | {h.point.zero_stage} | {h.point.batch_per_rank} | "
        f"{h.point.step_s * 1e3:,.1f} | "
        + (f"{h.predicted_s * 1e3:,.1f} | {h.error:+.1%} |" if h.predicted_s is not None else f"— | {h.why} |")
        for h in held
    ]
    errors = sorted(abs(h.error) for h in held if h.error is not None)
    tail = (
        f"Held-out error over {len(errors)} point(s): median |error| {statistics.median(errors):.1%}, "
        f"largest {errors[-1]:.1%}."
        if errors
        else "No point could be held out: the others alone never determine the model."
    )
    return "\n".join([head, *rows]) + "\n\n" + tail
