"""One run per run directory: rank 0 holds an exclusive ``flock`` on ``<run>/run.lock`` for the life of the run.

Two runs in one directory (a job resubmitted while the first still runs, a manual ``met2net train`` beside a Slurm
job) would write the same checkpoints, prune each other's and interleave ``metrics.jsonl``. The second one is
refused before it writes anything, with the holder's host, pid and Slurm job id. The kernel drops the lock when the
holding process ends, however it ends (kill -9 included), so a stale lock never blocks a re-run and there is nothing
to delete by hand. The file's contents only describe the holder. Torch-free.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from met2net.data.atomic import LockHeld, record_holder, recorded_holder, take_lock
from met2net.errors import UserError

LOCK = "run.lock"
_held: dict[Path, int] = {}  # run directory (resolved) → the descriptor whose lock this process holds


class RunDirInUse(UserError):
    """Another live process holds the run directory's lock."""


def holder(env: dict[str, str] | os._Environ = os.environ) -> dict[str, Any]:
    """Who this process is, as a second run's error shows it."""
    job = env.get("SLURM_JOB_ID", "")
    if job and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env.get('SLURM_ARRAY_JOB_ID', job)}_{env['SLURM_ARRAY_TASK_ID']}"
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": job,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def describe(info: dict[str, Any]) -> str:
    if not info:
        return "a process that is starting (it has not written its name yet)"
    job = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"host {info.get('host')}, pid {info.get('pid')}{job}, since {info.get('started')}"


def _refusal(run_dir: Path, info: dict[str, Any]) -> RunDirInUse:
    job = info.get("slurm_job_id")
    stop = f"scancel {job}" if job else f"kill {info.get('pid')} on {info.get('host')}"
    return RunDirInUse(
        f"{run_dir} is in use by another met2net run ({describe(info)}); two runs in one run directory would "
        f"overwrite each other's checkpoints. Wait for it to end, stop it ({stop}: it checkpoints on SIGTERM), or give "
        f"this run another run.dir. The lock ({run_dir / LOCK}) is released when that process ends: nothing to delete"
    )


def acquire(run_dir: str | Path) -> bool:
    """Hold ``run_dir``'s lock until ``release`` or the end of this process; refuse (``RunDirInUse``) when another
    process holds it. Taking it again in the process that holds it is a no-op. False (with a warning) on a file
    system that does not support ``flock`` (some NFS and Lustre mounts): the run goes on unguarded."""
    key = Path(run_dir).resolve()
    if key in _held:
        return True
    try:
        fd = take_lock(key / LOCK, "nothing stops a second run in this run directory")
    except LockHeld as held:
        raise _refusal(key, held.holder) from None
    if fd is None:
        return False
    record_holder(fd, holder())
    _held[key] = fd
    return True


def check_free(run_dir: str | Path) -> None:
    """Raise ``RunDirInUse`` when another process holds ``run_dir``'s lock, taking nothing and creating nothing
    (``met2net check``): the lock is tried and dropped at once. No lock file, or no lock support: free."""
    key = Path(run_dir).resolve()
    if key in _held:
        return
    try:
        fd = os.open(key / LOCK, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refusal(key, recorded_holder(fd)) from None
    except OSError:
        return
    finally:
        os.close(fd)  # drops the lock if it was taken


def release() -> None:
    """Drop every run-directory lock this process holds (the end of ``run_train``)."""
    while _held:
        os.close(_held.popitem()[1])
