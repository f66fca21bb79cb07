"""Plain helpers for tests against the local Slurm cluster (tools/local_slurm): submit, wait, inspect."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# sacct states after which a job will not run again; REQUEUED / PENDING / RUNNING etc. are not terminal
TERMINAL = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)


def _run(cmd: list[str], timeout_s: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def job_env(**extra: str) -> dict[str, str]:
    """os.environ for jobs: the repository's .venv/bin first on PATH, DeepSpeed on the CPU, one thread."""
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def sbatch(args: list[str], env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None) -> int:
    """Run `sbatch --parsable ARGS` and return the job id; raise RuntimeError with sbatch's stderr on failure."""
    p = _run(["sbatch", "--parsable", *args], env=env, cwd=cwd)
    if p.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return int(p.stdout.strip().split(";")[0])


def node_count() -> int:
    """Nodes in the cluster (tools/local_slurm emulates 2 unless MET2NET_SLURM_NODES=1 or the host is `localhost`)."""
    return len(_run(["sinfo", "-h", "-N", "-o", "%N"]).stdout.split())


def scontrol_show_job(job_id: int) -> str:
    p = _run(["scontrol", "show", "job", str(job_id)])
    return (p.stdout + p.stderr).strip()


def job_state(job_id: int) -> str:
    """The job's state as sacct reports it ('CANCELLED by 0' -> 'CANCELLED'); squeue's while sacct has no record."""
    out = _run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State"]).stdout.split()
    if out:
        return out[0]
    return _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).stdout.strip()


def wait_for_job(job_id: int, timeout_s: float = 60, poll_s: float = 0.5) -> str:
    """Poll until the job is in a terminal state and return it; on timeout raise with `scontrol show job`."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = job_state(job_id)
        # sacct can say COMPLETED a moment before the controller has finished with the job
        if state in TERMINAL and not _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).stdout.strip():
            return state
        time.sleep(poll_s)
    detail = scontrol_show_job(job_id)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s}s (last state {state!r}):\n{detail}")


_SACCT_FIELDS: set[str] | None = None


def job_field(job_id: int, field: str) -> str:
    """One field of the job's allocation: from sacct if it knows the field (ExitCode, Elapsed...), else from
    `scontrol show job` (Restarts, BatchFlag...; only while the controller still has the job: MinJobAge)."""
    global _SACCT_FIELDS
    if _SACCT_FIELDS is None:
        _SACCT_FIELDS = {f.lower() for f in _run(["sacct", "--helpformat"]).stdout.split()}
    if field.lower() in _SACCT_FIELDS:
        p = _run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", field])
        if p.returncode == 0 and p.stdout.strip():
            return p.stdout.strip().splitlines()[0]
    text = scontrol_show_job(job_id)
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key.lower() == field.lower():
            return value
    raise KeyError(f"job {job_id} has no field {field!r} in sacct or scontrol:\n{text}")
