"""``met2net scale run SWEEP.yaml``: every point of a sweep trained for real, one after the other, one row each in
``OUT/results.csv``; then the report and its plots.

Restartable: a point with a row is skipped (a failed one too, unless ``retry_failed``), so a sweep stopped anywhere
goes on where it stopped. A point that fails (bad config, out of memory, a rank that dies, a timeout) is a row with
status ``failed`` and its error, and the sweep goes on. Each point keeps its directory ``OUT/points/<name>/``:
``point.json`` (what it ran), its log (``log.txt``, or ``submitit/`` on Slurm), ``result.json`` (every rank's
measurements) and the run's ``metrics.jsonl``; the run's checkpoints are deleted (a sweep measures, it keeps no
weights).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from met2net.config import load_config
from met2net.errors import UserError
from met2net.scaling import results
from met2net.scaling.sweep import PointSpec, Sweep, config_hash, point_overrides
from met2net.study.executors import run_point_with


@dataclass
class SweepSummary:
    ran: list[str]
    skipped: list[str]
    failed: list[str]


def run_sweep(
    sweep: Sweep, out: Path, executor: str, retry_failed: bool = False, echo: Callable[[str], object] = print
) -> SweepSummary:
    out = Path(out).resolve()
    (out / "points").mkdir(parents=True, exist_ok=True)
    done = results.recorded(out)
    summary = SweepSummary([], [], [])
    for i, spec in enumerate(sweep.points, start=1):
        status = done.get(spec.name)
        if status == "ok" or (status == "failed" and not retry_failed):
            summary.skipped.append(spec.name)
            echo(f"[{i}/{len(sweep.points)}] {spec.name}: in results.csv ({status}), skipped")
            continue
        echo(f"[{i}/{len(sweep.points)}] {spec.name}: {spec.world_size} rank(s), global batch {spec.global_batch} …")
        row = run_one(sweep, spec, out, executor)
        results.append_row(out, row)
        summary.ran.append(spec.name)
        if row["status"] == "ok":
            echo(
                f"    {row['samples_per_s']:.2f} samples/s, {row['step_s'] * 1e3:.1f} ms per step, "
                f"peak {row['peak_memory_mib']:.0f} MiB per rank"
            )
        else:
            summary.failed.append(spec.name)
            echo(f"    failed: {row['error']}")
    return summary


def run_one(sweep: Sweep, spec: PointSpec, out: Path, executor: str) -> dict[str, Any]:
    """Train one point and return its row (status ok or failed; never raises for the point's own failure)."""
    point_dir = out / "points" / spec.name
    shutil.rmtree(point_dir / "run", ignore_errors=True)  # an earlier try's
    (point_dir / "result.json").unlink(missing_ok=True)
    point_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tic = time.monotonic()
    config = str(Path(sweep.config).resolve()) if sweep.config else None
    overrides = point_overrides(sweep, spec, point_dir / "run")
    try:
        cfg = load_config(config, overrides)
    except UserError as e:  # this point's settings are refused: nothing to launch
        return results.failed_row(spec, sweep, executor, str(e), started=started, point_wall_s=0.0)
    spec_file = point_dir / "point.json"
    spec_file.write_text(
        json.dumps(
            {
                "name": spec.name,
                "config": config,
                "overrides": overrides,
                "warmup_steps": sweep.warmup_steps,
                "timed_steps": sweep.timed_steps,
                "num_losses": sweep.num_losses,
                "time_communication": sweep.time_communication,
                "result": str(point_dir / "result.json"),
            },
            indent=1,
        )
        + "\n"
    )
    outcome = run_point_with(executor, spec_file, spec, sweep)
    from met2net.training.checkpoint import git_revision

    extra = {
        "config_hash": config_hash(cfg),
        "git": git_revision(),
        "started": started,
        "point_wall_s": time.monotonic() - tic,
        "log": str(outcome.log.relative_to(out)) if outcome.log.is_relative_to(out) else str(outcome.log),
    }
    shutil.rmtree(point_dir / "run" / "checkpoints", ignore_errors=True)
    result_file = point_dir / "result.json"
    if outcome.error is None and result_file.exists():
        return results.ok_row(spec, sweep, executor, json.loads(result_file.read_text()), **extra)
    error = outcome.error or "the ranks exited cleanly but wrote no result.json"
    return results.failed_row(spec, sweep, executor, error, **extra)


def describe(sweep: Sweep, executor: str) -> str:
    """The plan ``--dry-run`` prints: the points in the order they run."""
    lines = [
        f"sweep: {len(sweep.points)} point(s), {sweep.warmup_steps} warm-up + {sweep.timed_steps} timed step(s) each, "
        f"executor {executor}, base config {sweep.config or '(defaults)'}"
    ]
    for spec in sweep.points:
        lines.append(
            f"  {spec.name}: {spec.nodes} node(s) × {spec.tasks_per_node} task(s), ZeRO {spec.zero_stage}, "
            f"{spec.micro_batch} × {spec.accumulation} per rank, global batch {spec.global_batch}"
        )
    return "\n".join(lines)
