"""``OUT/results.csv``: one row per point of a sweep, appended as each point ends (docs/scaling.md, "results.csv").

A row is built from the point's spec and the result file its rank 0 wrote (``point.py``), or from its error; the
sweep appends it at once, so a sweep stopped at any moment loses at most the point that was running, and a
restarted one reads the names already in the file to skip them. Pure functions besides the two file helpers.
"""

from __future__ import annotations

import csv
import platform
from pathlib import Path
from typing import Any

import met2net
from met2net.errors import UserError
from met2net.scaling.sweep import PointSpec, Sweep
from met2net.scaling.timing import SPLIT

FILENAME = "results.csv"
COLUMNS = (
    "name",
    "status",  # ok | failed
    "error",  # a failed point's error, one line
    "world_size",
    "nodes",
    "tasks_per_node",
    "zero_stage",
    "micro_batch",
    "accumulation",
    "global_batch",
    "precision",
    "activation_checkpointing",
    "engine",  # deepspeed | local (one process without ZeRO or accumulation: plain PyTorch)
    "executor",
    "warmup_steps",
    "timed_steps",
    "samples_per_s",
    "step_s",
    *(f"{part}_s" for part in SPLIT),  # mean seconds per step, mean over the ranks
    "comm_calls",  # collectives per rank over the whole point
    "ring_passes_per_step",  # rank 0's collectives per timed step, an all-reduce counted twice (timing.TWO_PASSES)
    "peak_memory_mib",  # the largest rank's
    "peak_memory_per_rank_mib",  # ;-separated, rank order
    "parameters_bytes",  # the largest rank's
    "gradients_bytes",
    "optimizer_bytes",
    "trainable_parameters",
    "first_losses",  # rank 0's, one per optimizer step, ;-separated
    "hosts",
    "python",
    "torch",
    "deepspeed",
    "met2net",
    "git",
    "config_hash",
    "started",  # UTC, ISO 8601
    "point_wall_s",  # the whole point: start-up, training, validation, the final checkpoint
    "log",
)


def spec_columns(spec: PointSpec, sweep: Sweep, executor: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "world_size": spec.world_size,
        "nodes": spec.nodes,
        "tasks_per_node": spec.tasks_per_node,
        "zero_stage": spec.zero_stage,
        "micro_batch": spec.micro_batch,
        "accumulation": spec.accumulation,
        "global_batch": spec.global_batch,
        "precision": spec.precision,
        "activation_checkpointing": str(spec.activation_checkpointing).lower(),
        "executor": executor,
        "warmup_steps": sweep.warmup_steps,
        "timed_steps": sweep.timed_steps,
        "python": platform.python_version(),
        "met2net": met2net.__version__,
    }


def ok_row(spec: PointSpec, sweep: Sweep, executor: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The row of a point that trained: throughput from rank 0's timed wall time (the ranks step together), the split
    averaged over the ranks, memory and bytes of the rank that holds the most."""
    ranks = result["ranks"]
    rank0 = ranks[0]
    row = {
        **spec_columns(spec, sweep, executor),
        "status": "ok",
        "engine": result["engine"],
        "samples_per_s": spec.global_batch * sweep.timed_steps / rank0["wall_s"],
        "step_s": rank0["step_s"],
        "comm_calls": rank0["comm_calls"],
        "ring_passes_per_step": rank0.get("ring_passes_per_step", ""),
        "peak_memory_mib": max(r["peak_memory_mib"] for r in ranks),
        "peak_memory_per_rank_mib": ";".join(f"{r['peak_memory_mib']:.1f}" for r in ranks),
        "trainable_parameters": result["trainable_parameters"],
        "first_losses": ";".join(repr(x) for x in result["first_losses"]),
        "hosts": ";".join(dict.fromkeys(r["host"] for r in ranks)),
        "torch": result["versions"]["torch"],
        "deepspeed": result["versions"]["deepspeed"] or "",
        **extra,
    }
    for part in SPLIT:
        row[f"{part}_s"] = sum(r[f"{part}_s"] for r in ranks) / len(ranks)
    for key in ("parameters_bytes", "gradients_bytes", "optimizer_bytes"):
        row[key] = max(r.get(key, 0) for r in ranks)
    return row


def failed_row(spec: PointSpec, sweep: Sweep, executor: str, error: str, **extra: Any) -> dict[str, Any]:
    return {**spec_columns(spec, sweep, executor), "status": "failed", "error": one_line(error), **extra}


def one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_from_log(text: str) -> str:
    """The line of a point's log that says why it failed: met2net's own error line, else a rank's failure line, else
    the last exception line of a traceback, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for prefix in ("met2net: error:", "met2net: rank"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1]
    exceptions = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception", "Interrupt"))]
    if exceptions:
        return exceptions[-1]
    return lines[-1] if lines else "no output"


def append_row(out: Path, row: dict[str, Any]) -> Path:
    """Append ``row`` to ``out/results.csv`` (with the header when the file is new); refuse a file written with
    other columns (an older format) rather than mix the two."""
    path = Path(out) / FILENAME
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != COLUMNS:
            raise UserError(
                f"{path} has other columns than this met2net writes; give the sweep another -o directory or move "
                "the file away"
            )
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="raise")
        if new:
            writer.writeheader()
        writer.writerow({k: _cell(row.get(k, "")) for k in COLUMNS})
    return path


def recorded(out: Path) -> dict[str, str]:
    """{point name: status of its last row} in ``out/results.csv`` (empty when there is none yet)."""
    path = Path(out) / FILENAME
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {r["name"]: r["status"] for r in csv.DictReader(f) if r.get("name")}


def _cell(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value
