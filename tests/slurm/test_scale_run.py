"""`met2net scale run --executor slurm` on the local cluster: one submitit job per point, 1 node × 1 task against
2 nodes × 1 task (two slurmd on this host), each point trained by the same trainer as `met2net train`."""

from __future__ import annotations

import pytest

from tests.e2e.test_scale_run import read_rows, scale_run, write_sweep
from tests.slurm import cluster
from tests.slurm.cluster import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def test_two_point_sweep_on_one_and_two_nodes(tmp_path, job_env):
    if cluster.node_count() < 2:
        pytest.skip("the Slurm cluster has one node (tools/local_slurm: MET2NET_SLURM_NODES=2)")
    points = [{"ranks": "1x1", "micro_batch": 2}, {"ranks": "2x1", "micro_batch": 2}]
    sweep = write_sweep(tmp_path / "sweep.yaml", points, slurm={"time_min": 5, "partition": "debug"})
    out = tmp_path / "out"
    run = scale_run(sweep, "-o", out, "--executor", "slurm", env={**job_env, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = read_rows(out)
    one, two = rows["r1x1-z0-mb2-ga1-fp32"], rows["r2x1-z0-mb2-ga1-fp32"]
    assert (one["status"], two["status"]) == ("ok", "ok") and one["executor"] == two["executor"] == "slurm"
    assert (two["nodes"], two["tasks_per_node"], two["world_size"]) == ("2", "1", "2")
    assert len(two["hosts"].split(";")) == 2 and len(one["hosts"].split(";")) == 1  # the ranks ran on two nodes
    assert float(two["comm_s"]) > 0 and float(two["samples_per_s"]) > 0
    assert (out / two["log"]).exists() and "submitit" in two["log"]
    report = (out / "report.md").read_text()
    assert "| 0 | 2 | 2 × 1 | 4 |" in report
    # the calibrated model's section (its numbers, or why these two steps do not fit, depend on the machine's speed)
    assert "## Calibrated projection model" in report
