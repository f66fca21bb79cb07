"""`met2net evaluate` on 2 real ranks (torchrun, mpirun): every window scored once, the table equal to 1 rank's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from met2net.distributed.env import free_port
from tests.distributed.test_train_launchers import BIN, launch

TEST_YEAR = "data.test_years=[2012]"


def evaluate(launcher: list[str], run: Path, out: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "MASTER_PORT": str(free_port()),
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    cmd = [
        *launcher,
        "-m",
        "met2net.cli",
        "evaluate",
        str(run),
        "-o",
        str(out),
        "--no-plots",
        "--batch-size",
        "16",
        TEST_YEAR,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.distributed
def test_two_ranks_score_every_window_once_and_equal_one_rank(tmp_path):
    run = tmp_path / "run"
    launch([sys.executable], run, "training.schedule=implicit", "training.max_steps=3")
    one = evaluate([sys.executable], run, tmp_path / "one")
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
    two = evaluate(torchrun, run, tmp_path / "two")
    mpirun = [str(BIN / "mpirun"), "-n", "2", sys.executable]
    evaluate(mpirun, run, tmp_path / "mpi")
    a = (tmp_path / "one/metrics.csv").read_text()
    assert a == (tmp_path / "two/metrics.csv").read_text() == (tmp_path / "mpi/metrics.csv").read_text()
    assert '"world_size": 2' in (tmp_path / "two/metrics.json").read_text()
    assert '"forecasts": 363' in (tmp_path / "one/metrics.json").read_text()  # 366 days − (2 + 2) + 1 windows
    assert two.stdout.count("evaluated") == 1 and one.stdout.count("evaluated") == 1  # rank 0 reports
