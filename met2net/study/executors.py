"""Where a sweep point's ranks run: ``local`` (torchrun on this machine, gloo on CPUs) or ``slurm`` (one submitit
job per point through met2net's launcher, ``met2net/launch/submit.py``). Both run ``point.py`` on every rank and wait
for it to end; the point's rank 0 writes its result file, so the executor only says where the log is and, when the
point failed, why. One point at a time: points that ran side by side would time each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from met2net.errors import UserError
from met2net.scaling.results import error_from_log
from met2net.scaling.sweep import PointSpec, Sweep

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class Outcome:
    log: Path
    error: str | None  # None: the ranks exited cleanly


def run_point_with(executor: str, spec_file: Path, spec: PointSpec, sweep: Sweep) -> Outcome:
    if executor == "local":
        return run_local(spec_file, spec, sweep)
    if executor == "slurm":
        return run_slurm(spec_file, spec, sweep)
    raise UserError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")


def torchrun_command(spec_file: Path, world_size: int) -> list[str]:
    """torchrun with this interpreter, one node, ``world_size`` ranks, each running ``met2net scale point``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(world_size),
        "-m",
        "met2net.cli",
        "scale",
        "point",
        str(spec_file),
    ]


def run_local(spec_file: Path, spec: PointSpec, sweep: Sweep) -> Outcome:
    """torchrun in its own session, its output (every rank's) in ``<point>/log.txt``; killed with all its ranks
    after ``sweep.timeout_min``."""
    log = spec_file.parent / "log.txt"
    if spec.nodes > 1:
        layout = f"{spec.nodes}x{spec.tasks_per_node}"
        return Outcome(log, f"ranks {layout}: the local executor has one node; use --executor slurm")
    env = {**os.environ, "OMP_NUM_THREADS": str(sweep.threads_per_rank)}
    with log.open("w") as f:
        proc = subprocess.Popen(
            torchrun_command(spec_file, spec.world_size),
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: a timeout ends torchrun and every rank
        )
        try:
            code = proc.wait(timeout=sweep.timeout_min * 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Outcome(log, f"timed out after {sweep.timeout_min:g} min (timeout_min), killed")
    if code != 0:
        return Outcome(log, f"exit code {code}: {error_from_log(log.read_text(errors='replace'))}")
    return Outcome(log, None)


@dataclass(frozen=True)
class PointJob:
    """The submitit job of one point: ``run_point`` on every task (ranks from Slurm's variables)."""

    spec_file: str

    def __call__(self) -> str:
        from met2net.study.point import run_point

        run_point(self.spec_file)
        return self.spec_file


def run_slurm(spec_file: Path, spec: PointSpec, sweep: Sweep) -> Outcome:
    """One job of ``spec.nodes`` × ``spec.tasks_per_node`` tasks, submitted with ``met2net submit``'s executor settings
    (``--cpus-per-task`` = threads per rank), waited for; its logs stay in ``<point>/submitit``."""
    from met2net.launch.plan import Resources
    from met2net.launch.submit import make_executor

    s = sweep.slurm
    res = Resources(
        nodes=spec.nodes,
        tasks_per_node=spec.tasks_per_node,
        gpus_per_node=s.gpus_per_node,
        cpus_per_task=sweep.threads_per_rank,
        time_min=s.time_min,
        partition=s.partition,
        account=s.account,
        signal_delay_s=min(120, s.time_min * 30),
        max_requeues=0,
    )
    executor = make_executor("slurm", spec_file.parent / "submitit", res)
    executor.update_parameters(job_name=f"met2net-scale-{spec.name}")
    job = executor.submit(PointJob(str(spec_file)))
    log = Path(job.paths.stdout)
    try:
        job.results()
    except Exception as error:  # submitit raises the task's failure with its traceback, or the job's state
        return Outcome(log, f"Slurm job {job.job_id}: {error_from_log(str(error))}")
    return Outcome(log, None)
