"""`met2net scale report OUT`: a sweep's `OUT/results.csv` as Markdown tables: throughput with strong- and weak-scaling
efficiency, peak memory per rank against ZeRO stage, and the parity check that every ZeRO stage starts with the same
losses (docs/scaling.md). Reading and arithmetic only; the sweep that writes the file is issue 15's item 1.

results.csv has one row per point: ``world_size, zero_stage, micro_batch, samples_per_s, peak_memory_mib,
first_losses`` (the first training losses, ``;``-separated) and optionally ``accumulation`` (default 1); other
columns are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from met2net.errors import UserError
from met2net.scaling.table import read_rows

COLUMNS = ("world_size", "zero_stage", "micro_batch", "samples_per_s", "peak_memory_mib", "first_losses")
# ZeRO stages change where state lives and the order of reductions, not the arithmetic: in fp32 on gloo the losses
# were bitwise equal (FACTS.md); NCCL's reduction order and bf16 leave differences of rounding size
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Point:
    world_size: int
    zero_stage: int
    micro_batch: int
    accumulation: int
    samples_per_s: float
    peak_memory_mib: float
    first_losses: tuple[float, ...]

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

    def ok(self, tolerance: float) -> bool:
        return self.compared > 0 and self.max_rel_diff <= tolerance


def read_results(path: str | Path) -> list[Point]:
    rows = read_rows(path, COLUMNS)
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
            )
            for r in rows
        ]
    except ValueError as e:
        raise UserError(f"{path}: {e}") from e


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
    """For every (ranks, global batch) run at several ZeRO stages: the largest relative difference of any stage's
    first losses from the lowest stage's, over the losses both recorded."""
    checks = []
    for n, g in sorted({(p.world_size, p.global_batch) for p in points}):
        group = sorted((p for p in points if (p.world_size, p.global_batch) == (n, g)), key=lambda p: p.zero_stage)
        if len({p.zero_stage for p in group}) < 2:
            continue
        base, others = group[0], group[1:]
        compared = min(len(p.first_losses) for p in group)
        worst = max(
            (rel_diff(a, b) for p in others for a, b in zip(p.first_losses[:compared], base.first_losses)),
            default=0.0,
        )
        checks.append(Parity(n, g, tuple(p.zero_stage for p in group), compared, worst))
    return checks


def parity_table(checks: Sequence[Parity], tolerance: float) -> str:
    head = (
        f"| ranks | global batch | ZeRO stages | losses compared | max relative difference | ≤ {tolerance:g} |\n"
        "|---:|---:|---|---:|---:|---|"
    )
    rows = [
        f"| {c.world_size} | {c.global_batch} | {', '.join(map(str, c.stages))} | {c.compared} | "
        f"{c.max_rel_diff:.3g} | {'yes' if c.ok(tolerance) else 'NO'} |"
        for c in checks
    ]
    return "\n".join([head, *rows]) if rows else "no (ranks, global batch) was run at more than one ZeRO stage"


def report(points: Sequence[Point], tolerance: float = DEFAULT_TOLERANCE) -> tuple[str, bool]:
    """The Markdown report and whether every parity check passed."""
    checks = parity(points)
    text = "\n\n".join(
        [
            "# Scaling sweep",
            "## Throughput\n\nEfficiency = samples/s per rank against the point named (the fewest ranks at the same "
            "ZeRO stage and, for strong scaling, the same global batch; for weak scaling, the same per-rank batch).\n\n"
            + throughput_table(points),
            "## Peak memory per rank\n\n" + memory_table(points),
            f"## Parity across ZeRO stages\n\nFirst training losses of every stage against the lowest stage's, "
            f"relative tolerance {tolerance:g}.\n\n" + parity_table(checks, tolerance),
        ]
    )
    return text + "\n", all(c.ok(tolerance) for c in checks)
