"""``met2net status RUN_DIR``: the jobs of a run (states from ``sacct``), its checkpoints and last metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from met2net.compat.submitit_internals import local_outcome
from met2net.launch.jobs import JobRecord, read_records
from met2net.training.layout import BEST, LATEST, META, complete_step_dirs  # torch-free


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """job id → (state, exit code, elapsed) from accounting; {} with a reason printed if sacct fails."""
    if not job_ids:
        return {}
    if shutil.which("sacct") is None:
        raise RuntimeError("sacct is not on PATH (job states need Slurm accounting)")
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,ExitCode,Elapsed", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode:
        raise RuntimeError(f"sacct failed: {out.stderr.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        job_id, state, exit_code, elapsed = line.split("|")
        states[job_id] = (state.split()[0], exit_code, elapsed)  # "CANCELLED by 0" → CANCELLED
    return states


def stage_dirs(run_dir: Path) -> list[Path]:
    return sorted([*run_dir.glob("checkpoints/*"), *run_dir.glob("round_*/checkpoints/*")])


def describe_stage(stage_dir: Path, run_dir: Path) -> str:
    steps = complete_step_dirs(stage_dir)
    name = stage_dir.relative_to(run_dir)
    if not steps:
        return f"  {name}: no complete checkpoint yet"
    latest = stage_dir / (stage_dir / LATEST).read_text().strip() if (stage_dir / LATEST).is_file() else steps[-1]
    meta = json.loads((latest / META).read_text())
    loss = meta.get("val", {}).get("loss")
    text = f"  {name}: latest {latest.name}" + (f" (validation loss {loss:.5f})" if loss is not None else "")
    if (stage_dir / BEST).is_file():
        text += f", best {(stage_dir / BEST).read_text().strip()}"
    return text + f", {len(steps)} kept, {meta.get('world_size', 1)} rank(s)"


def last_metrics(metrics: Path) -> list[str]:
    last: dict[str, dict] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        last[record["split"]] = record
    lines = []
    for split in ("train", "val", "regression", "preempted", "resume"):
        if split in last:
            r = last[split]
            skip = ("split", "time", "schedule", "step")  # and the per-variable errors: metrics.jsonl has them
            shown = {k: v for k, v in r.items() if k not in skip and "/" not in k}
            values = ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
            where = f"{metrics.parent.name}/{metrics.name}"
            lines.append(f"  {where} last {split}: {r['schedule']} step {r['step']}: {values}")
    return lines


def status(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    records = read_records(run_dir)
    lines = [f"run {run_dir}"]
    if records:
        lines += ["jobs:", *job_lines(records)]
    else:
        lines.append("jobs: none recorded (jobs.tsv is written by `met2net submit` and slurm/pipeline.sh)")
    stages = stage_dirs(run_dir)
    lines += ["checkpoints:", *(describe_stage(s, run_dir) for s in stages)] if stages else ["checkpoints: none"]
    metrics = sorted([*run_dir.glob("metrics.jsonl"), *run_dir.glob("round_*/metrics.jsonl")])
    lines += ["metrics:", *[m for path in metrics for m in last_metrics(path)]] if metrics else ["metrics: none"]
    return "\n".join(lines)


def local_state(record: JobRecord) -> str:
    """A local submitit job: rank 0's result says how it ended; none yet means running (or killed)."""
    outcome = local_outcome(record.log, record.job_id)
    return "RUNNING?" if outcome is None else "COMPLETED" if outcome == "success" else "FAILED"


def job_lines(records: list[JobRecord]) -> list[str]:
    slurm_ids = [r.job_id for r in records if r.executor == "slurm"]
    try:
        states = slurm_states(slurm_ids)
        note = ""
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        states, note = {}, f"  (no job states: {error})"
    rows = [("JOB", "NAME", "STAGE", "STATE", "EXIT", "ELAPSED", "LOG")]
    for r in records:
        local = r.executor == "local"
        state, code, elapsed = (local_state(r), "", "") if local else states.get(r.job_id, ("?", "", ""))
        rows.append((r.job_id, r.name, r.schedule, state, code, elapsed, r.log))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    return lines + ([note] if note else [])
