"""The projection model's numbers fitted from measured steps, and its error on steps left out of the fit.

Without overlap the model is linear in its unknowns: step = b · t_c + (v·S) · (1/B) + k · α, with b samples per
rank, v the ring volume factor of the point's world size and ZeRO stage, S the communicated bytes, k = p·(n−1) the
ring steps of its p ring passes per step (``projection.ring_factors``), t_c the compute time per sample, B the
bandwidth and α the latency per ring step. p is the point's own, measured (a sweep's ``ring_passes_per_step``):
DeepSpeed's ZeRO 3 makes hundreds of small gathers per step where ZeRO 0–2 make a few large calls, and counting them
is what lets one (B, α) fit every stage. A least-squares fit gives an *effective* link: whatever overlap and protocol
overheads the measurements had are folded into B and α, so points should come from one link regime (all within a
node, or all across nodes). ``per_stage`` fits a t_c per ZeRO stage instead of one (the stages' engines differ:
DeepSpeed's ZeRO-3 hooks, the plain-PyTorch engine of one rank at ZeRO 0); the link stays shared.

A sweep's ``results.csv`` rows are measured points too (``from_rows``): b = micro-batch × accumulation, S = the trained
parameters (the gradients every stage communicates) × 4 bytes, in bf16 too (met2net's bf16 is autocast around the
forward: weights and gradients stay fp32, ``training/precision.py``). ``leave_one_out`` gives each point
the error of the model fitted to all the others: with the handful of points a sweep on a few ranks has, every point is
held out once rather than a few being set aside for good.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from met2net.errors import UserError
from met2net.scaling.projection import GB, Link, ring_factors
from met2net.scaling.table import read_rows


@dataclass(frozen=True)
class Measured:
    """One measured configuration: its median step time in seconds and its ring passes per step (None: the model's
    default, ``projection.DEFAULT_PASSES``; ``passes_from`` says where a count came from)."""

    world_size: int
    zero_stage: int
    batch_per_rank: int
    parameters: int
    bytes_per_element: int
    step_s: float
    name: str = ""
    passes: float | None = None
    passes_from: str = ""


@dataclass(frozen=True)
class Calibration:
    """A fitted model: one t_c, or one per ZeRO stage (``stage_compute_s``: (stage, t_c) pairs), and the link."""

    compute_s_per_sample: float
    link: Link
    stage_compute_s: tuple[tuple[int, float], ...] = ()

    def compute_s(self, zero_stage: int) -> float:
        """t_c of ``zero_stage``: the stage's own when fitted per stage."""
        if not self.stage_compute_s:
            return self.compute_s_per_sample
        fitted = dict(self.stage_compute_s)
        if zero_stage not in fitted:
            raise UserError(f"no point at ZeRO {zero_stage} to fit its compute time per sample")
        return fitted[zero_stage]

    def predict(self, point: Measured) -> float:
        """The step time the fitted model gives ``point``."""
        b, volume, steps = _row(point)
        return (
            b * self.compute_s(point.zero_stage)
            + volume / (self.link.bandwidth_gbs * GB)
            + steps * self.link.latency_us * 1e-6
        )


def _row(point: Measured) -> tuple[float, float, float]:
    """The point's coefficients of (t_c, 1/B, α): samples per rank, ring bytes, ring steps."""
    v, k = ring_factors(point.world_size, point.zero_stage, point.passes)
    return float(point.batch_per_rank), v * point.parameters * point.bytes_per_element, float(k)


def design(points: Sequence[Measured], per_stage: bool = False) -> tuple[np.ndarray, tuple[int, ...]]:
    """The least-squares matrix: a column of b per ZeRO stage present (``per_stage``) or one, then bytes and ring
    steps; and the stages of the compute columns (empty for one t_c)."""
    rows = np.array([_row(p) for p in points], dtype=np.float64).reshape(-1, 3)
    if not per_stage:
        return rows, ()
    stages = tuple(sorted({p.zero_stage for p in points}))
    compute = np.array([[r[0] if p.zero_stage == z else 0.0 for z in stages] for p, r in zip(points, rows)])
    return np.hstack([compute.reshape(len(points), len(stages)), rows[:, 1:]]), stages


def calibrate(points: Sequence[Measured], latency_us: float | None = None, per_stage: bool = False) -> Calibration:
    """Least-squares t_c (one, or one per stage), B and α from ``points``; with ``latency_us`` given, α is fixed and
    only t_c and B fitted (when every point's ring steps are proportional to its bytes, as with world sizes 1 and 2
    and no measured pass counts, latency cannot be told from bandwidth).

    A fitted latency below zero (noise, when latency is negligible) is set to zero and t_c, B refitted."""
    a, stages = design(points, per_stage)
    y = np.array([p.step_s for p in points], dtype=np.float64)
    names = (*(f"compute per sample at ZeRO {z}" for z in stages), "bandwidth", "latency") if stages else NAMES
    if latency_us is None:
        *t_c, inv_b, alpha = _solve(a, y, names)
        if alpha < 0:
            return calibrate(points, latency_us=0.0, per_stage=per_stage)
        latency = alpha * 1e6
    else:
        *t_c, inv_b = _solve(a[:, :-1], y - a[:, -1] * latency_us * 1e-6, names[:-1])
        latency = latency_us
    if not min(t_c) > 0 or not inv_b > 0:
        raise UserError(
            f"the measured steps do not fit the model (compute per sample {', '.join(f'{t:.3g}' for t in t_c)} s, "
            f"1/bandwidth {inv_b:.3g} s/B): communication must grow with world size and compute with the batch"
        )
    link = Link(1 / inv_b / GB, latency)
    if stages:
        return Calibration(math.nan, link, tuple(zip(stages, (float(t) for t in t_c))))
    return Calibration(float(t_c[0]), link)


NAMES = ("compute per sample", "bandwidth", "latency")


def _column_scale(a: np.ndarray) -> np.ndarray | None:
    """Each column's largest magnitude (bytes are ~10⁸, counts ~10), or None when the columns do not determine
    their unknowns (a column of zeros, or columns that depend on each other)."""
    scale = np.abs(a).max(axis=0) if len(a) else np.zeros(a.shape[1])
    if np.any(scale == 0) or np.linalg.matrix_rank(a / scale) < a.shape[1]:
        return None
    return scale


def _solve(a: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """``a x ≈ y`` in the least-squares sense, columns scaled to 1 first."""
    scale = _column_scale(a)
    if scale is None:
        raise UserError(
            f"{len(y)} measured point(s) cannot determine {', '.join(names)}: vary the batch per rank and the world "
            "size, and measure the ring passes per step (or give the latency)"
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


def leave_one_out(
    points: Sequence[Measured], latency_us: float | None = None, per_stage: bool = False
) -> list[HeldOut]:
    """Every point predicted by the model ``calibrate`` fits to the others: a held-out error for each measured point."""
    held = []
    for i, p in enumerate(points):
        try:
            fit = calibrate([q for j, q in enumerate(points) if j != i], latency_us, per_stage)
            held.append(HeldOut(p, fit.predict(p)))
        except UserError as e:
            held.append(HeldOut(p, None, str(e)))
    return held


def default_latency(points: Sequence[Measured], latency_us: float | None, per_stage: bool = False) -> float | None:
    """``latency_us`` when given; else None (fitted) when the points' ring steps vary apart from their bytes and
    batches, else 0: latency cannot be told from bandwidth (world sizes 1 and 2 without measured pass counts, whose
    ring steps are proportional to their bytes), so it is folded into the effective bandwidth."""
    if latency_us is not None:
        return latency_us
    return 0.0 if _column_scale(design(points, per_stage)[0]) is None else None


def summary(held: Sequence[HeldOut]) -> tuple[int, float, float] | None:
    """(points held out, median |error|, largest |error|), None when no point could be."""
    errors = sorted(abs(h.error) for h in held if h.error is not None)
    return (len(errors), statistics.median(errors), errors[-1]) if errors else None


# a precision's communicated gradient element: fp32 in both (bf16 is autocast; DeepSpeed's own bf16 mode is off)
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 4}
SWEEP_COLUMNS = ("world_size", "zero_stage", "micro_batch", "trainable_parameters", "step_s")


MEASURED = "measured per step"


def row_passes(row: dict[str, str]) -> tuple[float | None, str]:
    """A row's ring passes per step (``ring_passes_per_step``, measured over the timed steps) and where they come
    from; (None, "") in sweeps made before that column. Their ``comm_calls`` is no substitute: it counts the whole
    point (start-up broadcasts, validation, the checkpoint: 374 calls at 2 ranks and ZeRO 0 against 4 passes per
    step), and a fit on it fails; ``with_passes_of`` takes the count from a sweep that measured it instead."""
    if row.get("ring_passes_per_step"):
        return float(row["ring_passes_per_step"]), MEASURED
    return None, ""


def from_rows(rows: Sequence[dict[str, str]]) -> list[Measured]:
    """Measured points from a sweep's results.csv rows (``met2net scale run``): the rows with status ok (or none);
    b = micro_batch × accumulation, S = trainable_parameters × the precision's bytes (``BYTES_PER_ELEMENT``), the ring
    passes per step from ``row_passes``."""
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
                    *row_passes(r),
                )
            )
        except ValueError as e:
            raise UserError(f"{r.get('name')}: {e}") from e
    return points


def with_passes_of(points: Sequence[Measured], reference: Sequence[Measured]) -> list[Measured]:
    """``points`` with the ring passes per step measured in ``reference`` (another sweep of the same model and
    DeepSpeed settings) at the same world size and ZeRO stage, wherever their own were not measured per step: the call
    sequence is the code's, so a count measured under any load holds for the same configuration."""
    counts: dict[tuple[int, int], list[float]] = {}
    for r in reference:
        if r.passes is not None and r.passes_from == MEASURED:
            counts.setdefault((r.world_size, r.zero_stage), []).append(r.passes)
    out = []
    for p in points:
        key = (p.world_size, p.zero_stage)
        if p.passes_from != MEASURED and key in counts:
            p = replace(p, passes=statistics.fmean(counts[key]), passes_from="measured per step in another sweep")
        out.append(p)
    return out


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


def markdown(points: Sequence[Measured], latency_us: float | None = None, per_stage: bool = False) -> str:
    """The report's calibration section: the model fitted to every point, then each point's held-out error. A sweep
    whose points cannot determine the model gets the reason instead of numbers."""
    latency = default_latency(points, latency_us, per_stage)
    try:
        fit = calibrate(points, latency, per_stage)
    except UserError as e:
        return f"The projection model could not be calibrated from these points: {e}."
    held = leave_one_out(points, latency, per_stage)
    head = (
        f"step = b · t_c + v·S / B + p·(n−1) · α (docs/scaling.md) fitted by least squares to the {len(points)} "
        f"measured points: {describe(fit, latency_us, latency)}. {_passes_note(points)} Held out: each point "
        f"predicted by the model fitted to the other {len(points) - 1}; error = (predicted − measured) / measured.\n\n"
        "| point | ranks | ZeRO | samples per rank | passes per step | measured step (ms) | predicted (ms) | error |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {h.point.name or '—'} | {h.point.world_size} | {h.point.zero_stage} | {h.point.batch_per_rank} | "
        f"{'—' if h.point.passes is None else f'{h.point.passes:,.1f}'} | {h.point.step_s * 1e3:,.1f} | "
        + (f"{h.predicted_s * 1e3:,.1f} | {h.error:+.1%} |" if h.predicted_s is not None else f"— | {h.why} |")
        for h in held
    ]
    stats = summary(held)
    tail = (
        f"Held-out error over {stats[0]} point(s): median |error| {stats[1]:.1%}, largest {stats[2]:.1%}."
        if stats
        else "No point could be held out: the others alone never determine the model."
    )
    return "\n".join([head, *rows]) + "\n\n" + tail + " " + _other_mode(points, latency_us, per_stage)


def _other_mode(points: Sequence[Measured], latency_us: float | None, per_stage: bool) -> str:
    """The held-out errors of the other compute model (one t_c, or one per stage): the evidence for choosing."""
    other = not per_stage
    stats = summary(leave_one_out(points, default_latency(points, latency_us, other), other))
    mode = "a t_c per ZeRO stage (`--per-stage`)" if other else "one t_c for all stages"
    if stats is None:
        return f"With {mode} no point could be held out."
    return f"With {mode}: median |error| {stats[1]:.1%}, largest {stats[2]:.1%} over {stats[0]} point(s)."


def describe(fit: Calibration, latency_us: float | None, latency: float | None) -> str:
    """The fitted numbers in words; ``latency_us`` as the user gave it, ``latency`` as ``default_latency`` chose."""
    if fit.stage_compute_s:
        compute = "t_c per ZeRO stage " + ", ".join(f"{z}: {t * 1e3:.4g} ms" for z, t in fit.stage_compute_s)
    else:
        compute = f"t_c = {fit.compute_s_per_sample * 1e3:.4g} ms per sample"
    if latency_us is not None:
        alpha = f"α = {fit.link.latency_us:.4g} µs per ring step (given)"
    elif latency is not None:
        alpha = (
            "α = 0 (fixed: the points' ring steps are proportional to their bytes, so latency cannot be told from "
            "bandwidth and the effective bandwidth holds both)"
        )
    else:
        alpha = f"α = {fit.link.latency_us:.4g} µs per ring step"
    return f"{compute}, effective bandwidth B = {fit.link.bandwidth_gbs:.4g} GB/s, {alpha}"


def _passes_note(points: Sequence[Measured]) -> str:
    """Where the points' ring passes per step came from (``row_passes``), in one sentence."""
    sources: dict[str, int] = {}
    for p in points:
        how = p.passes_from or "the model's default (one call per pass)"
        sources[how] = sources.get(how, 0) + 1
    return "Ring passes p per step: " + "; ".join(f"{how} ({n} points)" for how, n in sources.items()) + "."
