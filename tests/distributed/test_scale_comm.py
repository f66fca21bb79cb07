"""`met2net scale comm` on 2 real gloo ranks under torchrun: one CSV row per op × size, nccl-tests' bandwidths."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from met2net.distributed.env import free_port
from tests.distributed.harness import ROOT

BIN = Path(sys.executable).parent


@pytest.mark.distributed
def test_two_ranks_time_every_collective(tmp_path):
    out = tmp_path / "comm.csv"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
    cmd += ["-m", "met2net.cli", "scale", "comm", "--sizes", "4096", "65536", "--iters", "3", "--warmup", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    run = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("2 ranks, gloo") == 1  # rank 0 alone prints the table
    assert "latency (all-reduce of 4,096 bytes)" in run.stdout
    rows = list(csv.DictReader(out.open()))
    assert sorted((r["op"], int(r["bytes"])) for r in rows) == sorted(
        (op, b) for op in ("all_reduce", "all_gather", "reduce_scatter") for b in (4096, 65536)
    )
    factor = {"all_reduce": 1.0, "all_gather": 0.5, "reduce_scatter": 0.5}  # 2 (n−1)/n and (n−1)/n at n = 2
    for r in rows:
        assert (r["world_size"], r["backend"]) == ("2", "gloo")
        assert float(r["time_us"]) > 0
        assert float(r["algbw_gbs"]) == pytest.approx(int(r["bytes"]) / (float(r["time_us"]) * 1e-6) / 1e9, rel=1e-12)
        assert float(r["busbw_gbs"]) == float(r["algbw_gbs"]) * factor[r["op"]]
