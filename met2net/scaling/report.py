"""`met2net scale report OUT`: a sweep's `OUT/results.csv` as Markdown tables: throughput with strong- and weak-scaling
efficiency, peak memory per rank against ZeRO stage, and the parity check that every ZeRO stage starts with the same
losses (docs/scaling.md); with a sweep's step-time split and state bytes, tables of those too. Reading and arithmetic;
``write_report`` also draws the plots (``plots.py``). ``met2net scale run`` (``met2net/study/runner.py``) writes the
file.

results.csv has one row per point: ``world_size, zero_stage, micro_batch, samples_per_s, peak_memory_mib,
first_losses`` (the first training losses, ``;``-separated) and optionally ``accumulation`` (default 1), ``name``,
``status`` (only ``ok`` rows are measured points; a point's last row counts) and the step-time split
(``data_s`` … ``other_s``); with ``step_s`` and ``trainable_parameters`` also, the projection model calibrated on
the points and each point's held-out error (``calibration.py``); other columns are ignored. ``met2net scale run``
writes all of them (``results.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from met2net.errors import UserError
from met2net.scaling.calibration import SWEEP_COLUMNS, from_rows
from met2net.scaling.calibration import markdown as calibration_markdown
from met2net.scaling.table import read_rows
from met2net.scaling.timing import SPLIT

COLUMNS = ("world_size", "zero_stage", "micro_batch", "samples_per_s", "peak_memory_mib", "first_losses")
# ZeRO stages change where state lives and the order of reductions, not the arithmetic: in fp32 on gloo the losses
# were bitwise equal (FACTS.md); NCCL's reduction order and bf16 leave differences of rounding size
DEFAULT_TOLERANCE = 1e-4
HELD = ("parameters", "gradients", "optimizer")  # the ``<kind>_bytes`` columns: what a rank holds (footprint.py)


@dataclass(frozen=True)
class Point:
    world_size: int
    zero_stage: int
    micro_batch: int
    accumulation: int
    samples_per_s: float
    peak_memory_mib: float
    first_losses: tuple[float, ...]
    name: str = ""
    split: dict[str, float] = field(default_factory=dict)  # part of SPLIT → mean seconds per step; empty: not in file
    held: dict[str, float] = field(default_factory=dict)  # parameters/gradients/optimizer → bytes on the largest rank
    precision: str = ""
    activation_checkpointing: str = ""

    @property
    def setting(self) -> str:
        """What must be equal, besides ranks and batch, for losses to be comparable across ZeRO stages."""
        ac = ", activation checkpointing" if self.activation_checkpointing == "true" else ""
        return f"{self.micro_batch} × {self.accumulation}" + (f", {self.precision}" if self.precision else "") + ac

    @property
    def label(self) -> str:
        return self.name or f"{self.world_size} ranks, ZeRO {self.zero_stage}, {self.micro_batch}×{self.accumulation}"

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.accumulation


@dataclass(frozen=True)
class Parity:
    world_size: int
    global_batch: int
    stages: tuple[int, ...]
    compared: int  # losses compared (the shortest list's length)
    max_rel_diff: float  # against the lowest stage's losses
    setting: str = ""  # micro-batch × accumulation, precision (Point.setting)

    def ok(self, tolerance: float) -> bool:
        return self.compared > 0 and self.max_rel_diff <= tolerance


def latest_rows(path: str | Path) -> list[dict[str, str]]:
    """The file's rows, a named point's last row only (a sweep that retried a failed point appended a second one)."""
    rows = read_rows(path, COLUMNS)
    last = {r.get("name") or f"#{i}": r for i, r in enumerate(rows)}
    return list(last.values())


def read_results(path: str | Path) -> list[Point]:
    """The measured points: rows without a status, or with status ok."""
    rows = [r for r in latest_rows(path) if (r.get("status") or "ok") == "ok"]
    if not rows:
        raise UserError(f"{path}: no point with status ok to report on")
    try:
        return [
            Point(
                int(r["world_size"]),
                int(r["zero_stage"]),
                int(r["micro_batch"]),
                int(r.get("accumulation") or 1),
                float(r["samples_per_s"]),
                float(r["peak_memory_mib"]),
                tuple(float(x) for x in r["first_losses"].split(";") if x.strip()),
                r.get("name") or "",
                {part: float(r[f"{part}_s"]) for part in SPLIT if r.get(f"{part}_s")},
                {k: float(r[f"{k}_bytes"]) for k in HELD if r.get(f"{k}_bytes")},
                r.get("precision") or "",
                (r.get("activation_checkpointing") or "").lower(),
            )
            for r in rows
        ]
    except ValueError as e:
        raise UserError(f"{path}: {e}") from e


def read_failed(path: str | Path) -> list[tuple[str, str]]:
    """(name, error) of every point whose last row failed."""
    return [(r.get("name", ""), r.get("error", "")) for r in latest_rows(path) if r.get("status") == "failed"]


def efficiency(point: Point, base: Point) -> float:
    """Throughput per rank against ``base``'s: (samples/s ÷ base samples/s) ÷ (ranks ÷ base ranks)."""
    return (point.samples_per_s / base.samples_per_s) / (point.world_size / base.world_size)


def _smallest(points: Sequence[Point], same: Callable[[Point], bool]) -> Point:
    return min((q for q in points if same(q)), key=lambda q: (q.world_size, q.micro_batch))


def throughput_table(points: Sequence[Point]) -> str:
    """Strong scaling: against the fewest ranks at the same ZeRO stage and global batch (the same work, spread).
    Weak scaling: against the fewest ranks at the same ZeRO stage and per-rank batch (more work, more ranks)."""
    head = (
        "| ZeRO | ranks | micro-batch × accumulation | global batch | samples/s | strong-scaling efficiency | "
        "weak-scaling efficiency |\n|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for p in sorted(points, key=lambda p: (p.zero_stage, p.global_batch, p.world_size, p.micro_batch)):
        strong = _smallest(points, lambda q, p=p: q.zero_stage == p.zero_stage and q.global_batch == p.global_batch)
        weak = _smallest(
            points,
            lambda q, p=p: (
                (q.zero_stage, q.micro_batch, q.accumulation) == (p.zero_stage, p.micro_batch, p.accumulation)
            ),
        )
        rows.append(
            f"| {p.zero_stage} | {p.world_size} | {p.micro_batch} × {p.accumulation} | {p.global_batch} | "
            f"{p.samples_per_s:,.2f} | {efficiency(p, strong):.3f} (vs {strong.world_size}) | "
            f"{efficiency(p, weak):.3f} (vs {weak.world_size}) |"
        )
    return "\n".join([head, *rows])


def memory_table(points: Sequence[Point]) -> str:
    """Peak memory per rank (MiB): one row per (ranks, micro-batch), one column per ZeRO stage in the file."""
    stages = sorted({p.zero_stage for p in points})
    by_key = {(p.world_size, p.micro_batch, p.accumulation, p.zero_stage): p.peak_memory_mib for p in points}
    head = "| ranks | micro-batch | " + " | ".join(f"ZeRO {z} (MiB)" for z in stages) + " |"
    head += "\n|---:|---:|" + "---:|" * len(stages)
    rows = []
    for n, b, a in sorted({(p.world_size, p.micro_batch, p.accumulation) for p in points}):
        cells = [f"{by_key[(n, b, a, z)]:,.1f}" if (n, b, a, z) in by_key else "—" for z in stages]
        rows.append(f"| {n} | {b} × {a} | " + " | ".join(cells) + " |")
    return "\n".join([head, *rows])


def rel_diff(a: float, b: float) -> float:
    """|a − b| / |b|; 0 when both are equal (zero included), infinite when only b is zero."""
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b != 0 else math.inf


def parity(points: Sequence[Point]) -> list[Parity]:
    """For every (ranks, micro-batch × accumulation, precision, activation checkpointing) run at several ZeRO stages:
    the largest relative difference of any stage's first losses from the lowest stage's, over the losses all
    recorded. Anything but the stage differing (a bf16 point beside fp32 ones, a micro-batch that changes the batch
    norm's statistics) would make the losses differ for another reason."""
    groups: dict[tuple[int, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.world_size, p.setting), []).append(p)
    checks = []
    for (n, setting), group in sorted(groups.items()):
        group = sorted(group, key=lambda p: p.zero_stage)
        if len({p.zero_stage for p in group}) < 2:
            continue
        base, others = group[0], group[1:]
        compared = min(len(p.first_losses) for p in group)
        worst = max(
            (rel_diff(a, b) for p in others for a, b in zip(p.first_losses[:compared], base.first_losses)),
            default=0.0,
        )
        checks.append(Parity(n, base.global_batch, tuple(p.zero_stage for p in group), compared, worst, setting))
    return checks


def parity_table(checks: Sequence[Parity], tolerance: float) -> str:
    head = (
        "| ranks | global batch | per rank | ZeRO stages | losses compared | max relative difference | "
        f"≤ {tolerance:g} |\n|---:|---:|---|---|---:|---:|---|"
    )
    rows = [
        f"| {c.world_size} | {c.global_batch} | {c.setting} | {', '.join(map(str, c.stages))} | {c.compared} | "
        f"{c.max_rel_diff:.3g} | {'yes' if c.ok(tolerance) else 'NO'} |"
        for c in checks
    ]
    return "\n".join([head, *rows]) if rows else "no point was run at more than one ZeRO stage with all else equal"


def split_table(points: Sequence[Point]) -> str:
    """Milliseconds per optimizer step in each part (mean over the timed steps and the ranks), for points that have
    the split."""
    head = (
        "| point | ranks | ZeRO | step (ms) | " + " | ".join(SPLIT) + " |\n|---|---:|---:|---:|" + "---:|" * len(SPLIT)
    )
    rows = [
        f"| {p.label} | {p.world_size} | {p.zero_stage} | {sum(p.split.values()) * 1e3:,.1f} | "
        + " | ".join(f"{p.split.get(part, 0.0) * 1e3:,.1f}" for part in SPLIT)
        + " |"
        for p in sorted(points, key=lambda p: (p.world_size, p.zero_stage, p.micro_batch, p.accumulation))
        if p.split
    ]
    return "\n".join([head, *rows]) if rows else ""


def held_table(points: Sequence[Point]) -> str:
    """MiB of parameters, gradients and optimizer state on the rank that holds the most, for points that have them."""
    head = "| point | ranks | ZeRO | " + " | ".join(f"{k} (MiB)" for k in HELD) + " |\n|---|---:|---:|" + "---:|" * 3
    rows = [
        f"| {p.label} | {p.world_size} | {p.zero_stage} | "
        + " | ".join(f"{p.held.get(k, 0.0) / 2**20:,.3f}" for k in HELD)
        + " |"
        for p in sorted(points, key=lambda p: (p.world_size, p.micro_batch, p.accumulation, p.zero_stage))
        if p.held
    ]
    return "\n".join([head, *rows]) if rows else ""


def failed_table(failed: Sequence[tuple[str, str]]) -> str:
    return "| point | error |\n|---|---|\n" + "\n".join(f"| {n} | {e.replace('|', '/')} |" for n, e in failed)


def report(
    points: Sequence[Point],
    tolerance: float = DEFAULT_TOLERANCE,
    failed: Sequence[tuple[str, str]] = (),
    plots: Sequence[str] = (),
    calibration: str = "",
) -> tuple[str, bool]:
    """The Markdown report and whether every parity check passed. ``failed``: (name, error) of failed points;
    ``plots``: PNG paths relative to the report, shown at its end; ``calibration``: the calibrated projection's
    section (``calibration.markdown``), left out when empty."""
    checks = parity(points)
    split, held = split_table(points), held_table(points)
    sections = [
        *(
            [
                "## State held per rank\n\nParameters, gradients and optimizer state (with ZeRO's fp32 master "
                "partitions) as the rank holding the most had them at its first timed optimizer step, counted from "
                "the tensors' storages (docs/scaling.md).\n\n" + held
            ]
            if held
            else []
        ),
        *(
            [
                "## Step-time split\n\nMilliseconds per optimizer step, mean over the timed steps and the ranks; "
                "each part without the communication inside it, `comm` the time in collectives (made blocking "
                "to time them), `other` the rest of the step (docs/scaling.md).\n\n" + split
            ]
            if split
            else []
        ),
        *(["## Calibrated projection model\n\n" + calibration] if calibration else []),
        *(["## Failed points\n\n" + failed_table(failed)] if failed else []),
        *(["## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in plots)] if plots else []),
    ]
    text = "\n\n".join(
        [
            "# Scaling sweep",
            "## Throughput\n\nEfficiency = samples/s per rank against the point named (the fewest ranks at the same "
            "ZeRO stage and, for strong scaling, the same global batch; for weak scaling, the same per-rank batch).\n\n"
            + throughput_table(points),
            "## Peak memory per rank\n\n" + memory_table(points),
            f"## Parity across ZeRO stages\n\nFirst training losses (rank 0's) of every stage against the lowest "
            f"stage's with everything else equal, relative tolerance {tolerance:g}.\n\n"
            + parity_table(checks, tolerance),
            *sections,
        ]
    )
    return text + "\n", all(c.ok(tolerance) for c in checks)


def calibration_section(path: str | Path, latency_us: float | None = None) -> str:
    """The calibrated projection's section for a results.csv with a sweep's step times and trained parameters
    (``met2net scale run`` writes them); empty for a file without them."""
    rows = latest_rows(path)
    if not all(c in rows[0] for c in SWEEP_COLUMNS):
        return ""
    try:
        points = from_rows(rows)
    except UserError as e:  # a row the model cannot read: the rest of the report still stands
        return f"The projection model could not be calibrated: {e}."
    return calibration_markdown(points, latency_us)


def write_report(
    out: str | Path, tolerance: float = DEFAULT_TOLERANCE, with_plots: bool = True, latency_us: float | None = None
) -> tuple[str, bool]:
    """``out/report.md`` (and ``out/plots/*.png``) from ``out/results.csv``: the report's text and whether parity
    held. ``latency_us`` fixes the calibration's latency (default: fitted, or 0 with fewer than three world sizes)."""
    out = Path(out)
    path = out / "results.csv"
    points = read_results(path)
    plots: list[str] = []
    if with_plots:
        from met2net.scaling.plots import write_plots

        plots = [str(p.relative_to(out)) for p in write_plots(points, out / "plots")]
    text, ok = report(points, tolerance, read_failed(path), plots, calibration_section(path, latency_us))
    (out / "report.md").write_text(text)
    return text, ok
