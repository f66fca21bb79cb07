"""The local Slurm cluster itself (tools/local_slurm), with real sbatch/srun/sacct: what our jobs rely on."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm.cluster import REPO, job_field, job_state, sbatch, scontrol_show_job, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def test_two_task_job_completes(tmp_path, job_env):
    out = tmp_path / "out.txt"
    job = sbatch(
        [
            "-n",
            "2",
            "-t",
            "1",
            "-o",
            str(out),
            "--wrap",
            "srun -n 2 bash -c 'echo rank=$SLURM_PROCID of=$SLURM_NTASKS python=$(command -v python)'",
        ],
        env=job_env,
        cwd=tmp_path,
    )
    assert wait_for_job(job, 30) == "COMPLETED", out.read_text() if out.exists() else ""
    assert job_field(job, "ExitCode") == "0:0"
    lines = sorted(out.read_text().split("\n")[:-1])
    venv_python = job_env["PATH"].split(":")[0] + "/python"
    assert lines == [f"rank={r} of=2 python={venv_python}" for r in (0, 1)]


def test_afterok_dependent_runs_after_its_parent(tmp_path, job_env):
    parent = sbatch(["-t", "1", "-o", "/dev/null", "--wrap", f"sleep 2; touch {tmp_path}/parent.done"], env=job_env)
    child = sbatch(
        [
            "-t",
            "1",
            "-o",
            "/dev/null",
            f"--dependency=afterok:{parent}",
            "--wrap",
            f"test -e {tmp_path}/parent.done && touch {tmp_path}/child.done",
        ],
        env=job_env,
    )
    assert wait_for_job(child, 40) == "COMPLETED"
    assert job_state(parent) == "COMPLETED" and (tmp_path / "child.done").exists()


def test_dependent_of_failed_job_is_cancelled(tmp_path, job_env):
    parent = sbatch(["-t", "1", "-o", "/dev/null", "--wrap", "exit 3"], env=job_env)
    child = sbatch(
        ["-t", "1", "-o", "/dev/null", f"--dependency=afterok:{parent}", "--wrap", f"touch {tmp_path}/child.ran"],
        env=job_env,
    )
    assert wait_for_job(parent, 30) == "FAILED"
    assert job_field(parent, "ExitCode") == "3:0"
    # kill_invalid_depend: cancelled, not left PENDING with Reason=DependencyNeverSatisfied
    assert wait_for_job(child, 30) == "CANCELLED"
    assert not (tmp_path / "child.ran").exists()


def test_requeue_restarts_the_job_with_restart_count(tmp_path, job_env):
    counts = tmp_path / "restarts.txt"
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
echo "${{SLURM_RESTART_COUNT:-0}}" >> {counts}
if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 120; fi
""")
    job = sbatch(["--requeue", "-t", "5", "-o", str(tmp_path / "slurm-%j.out"), str(script)], env=job_env)
    deadline = time.monotonic() + 30
    while not counts.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts.exists(), scontrol_show_job(job)
    t0 = time.monotonic()
    subprocess.run(["scontrol", "requeue", str(job)], check=True, capture_output=True, timeout=30)
    assert wait_for_job(job, 60) == "COMPLETED"
    assert time.monotonic() - t0 < 40
    assert counts.read_text().split() == ["0", "1"]
    assert job_field(job, "Restarts") == "1"


def _holders_of(path: str) -> list[str]:
    holders = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:  # a process may end while we look
            if path in [os.readlink(fd) for fd in fd_dir.iterdir()]:
                holders.append(f"{fd_dir.parent.name} ({(fd_dir.parent / 'comm').read_text().strip()})")
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
    return holders


def test_daemons_and_jobs_do_not_hold_the_start_stop_lock(tmp_path, job_env):
    """A daemon started with the lock's descriptor open keeps the lock: stop.sh then waits 15 min and fails."""
    if os.geteuid() != 0:
        pytest.skip("needs root to read the Slurm daemons' open files")
    lock = "/run/lock/met2net-slurm.lock"
    out = tmp_path / "fds.txt"
    job = sbatch(["-t", "1", "-o", str(out), "--wrap", "ls -l /proc/$$/fd"], env=job_env)
    assert wait_for_job(job, 30) == "COMPLETED"
    assert lock not in out.read_text()
    assert _holders_of(lock) == []


def test_start_recovers_from_a_damaged_accounting_db(tmp_path, job_env):
    """A machine image taken while mariadbd ran can hold an InnoDB file whose header page is zeros (CI saw
    exactly this): start.sh must wipe the throwaway accounting DB and come up, not time out and fail the run.
    Restarts the shared cluster (a few seconds); runs last in this module."""
    if os.geteuid() != 0:
        pytest.skip("needs root to stop and restart the Slurm daemons")
    conf = Path("/etc/slurm/slurm.conf").read_text()
    base = Path(next(line for line in conf.splitlines() if line.startswith("StateSaveLocation=")).split("=")[1]).parent
    db = base / "db"
    subprocess.run(
        ["bash", "tools/local_slurm/stop.sh"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "MET2NET_SLURM_KEEP_MUNGE": "1"},
    )
    with open(db / "data" / "ibdata1", "r+b") as f:
        f.write(bytes(16384))
    p = subprocess.run(["bash", "tools/local_slurm/start.sh"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "wiping the accounting DB" in p.stderr
    job = sbatch(["-t", "1", "-o", "/dev/null", "--wrap", "true"], env=job_env)
    assert wait_for_job(job, 30) == "COMPLETED"
    assert job_field(job, "ExitCode") == "0:0"  # sacct answers: the new DB records jobs
