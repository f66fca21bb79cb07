"""Fixtures for tests against the real local Slurm cluster (start it with `sudo bash tools/local_slurm/start.sh`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.slurm import cluster

READY = ("idle", "mixed", "allocated", "completing")


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The node's state once `sinfo` shows it ready (waits up to 15 s for a node that is not ready yet);
    skips at once when no controller answers (sinfo itself
    retries for ~9 s before it gives up); fails instead under scripts/test.sh, which started it."""
    deadline = time.monotonic() + 15
    states = "sinfo not found on PATH"
    while shutil.which("sinfo"):
        try:
            p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
        except subprocess.TimeoutExpired:
            states = "sinfo timed out"
            break
        states = (p.stdout + p.stderr).strip() or "no nodes"
        if p.returncode != 0:
            break
        if states.startswith(READY):
            return states.split()[0]
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    message = f"no Slurm cluster is running ({states}): start one with `sudo bash tools/local_slurm/start.sh`"
    if os.environ.get("MET2NET_SLURM_REQUIRED") == "1":  # scripts/test.sh started it: losing it is a failure
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def job_env() -> dict[str, str]:
    """Environment for sbatch (which passes it on to the job): the repo's .venv/bin first on PATH,
    DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1."""
    return cluster.job_env()
