"""The run directory's lock (met2net/training/run_lock.py) between real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from met2net.training import run_lock

ROOT = Path(__file__).resolve().parents[2]


def _holder_script(run: Path) -> list[str]:
    code = f"from met2net.training import run_lock; run_lock.acquire({str(run)!r})"
    return [sys.executable, "-c", code]


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_lock.acquire(tmp_path)
    try:
        assert run_lock.acquire(tmp_path)  # again in the holding process: a no-op
        other = subprocess.run(_holder_script(tmp_path), capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert other.returncode != 0
        assert "RunDirInUse" in other.stderr and f"pid {os.getpid()}" in other.stderr
        assert "Slurm job 4242" in other.stderr and "scancel 4242" in other.stderr
    finally:
        run_lock.release()
    again = subprocess.run(_holder_script(tmp_path), capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 0, again.stderr
