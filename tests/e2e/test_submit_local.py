"""`met2net submit --executor local`: the stage-one → stage-two pipeline on this machine through submitit's
local executor (real processes, 2 ranks), with one checkpoint-and-requeue on submitit's time-limit signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.distributed.harness import ROOT
from tests.e2e.test_train_cli import TINY


def train_steps(run) -> list[int]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train" and r["schedule"] == "stage1"]


@pytest.mark.slow
@pytest.mark.distributed
def test_local_pipeline_requeues_on_time_limit_signal_and_runs_stage_two(tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("training.max_steps")] + [
        "training.max_steps=300",
        "training.val_every=0",
        "training.log_every=20",
        "training.progress=false",
        f"run.dir={run}",
    ]
    cmd = [
        sys.executable,
        "-m",
        "met2net.cli",
        "submit",
        "configs/quickstart.yaml",
        *overrides,
        "--executor",
        "local",
        "--tasks-per-node",
        "2",
        "--time",
        "10",
        "--signal-delay",
        "60",
        "--rounds",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(s >= 40 for s in train_steps(run)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        # the signal the local executor sends its tasks `--signal-delay` before `--time`, sent now
        tasks = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "submitit.core._submit" in " ".join(p.cmdline())
        ]
        assert len(tasks) == 2, proc.communicate()
        for task in tasks:
            task.send_signal(signal.SIGUSR2)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert "met2net-stage1 finished" in stdout and "met2net-stage2 finished" in stdout
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["schedule"] for r in log if r["split"] in ("preempted", "resume")] == ["stage1", "stage1"]
    assert train_steps(run)[-1] == 300 and (run / "checkpoints/stage2/step_300/COMPLETE").exists()
    job1 = stdout.split("submitted met2net-stage1: job ")[1].split(",")[0]
    assert "Requeued job" in (run / "submitit" / f"{job1}_0_log.out").read_text()
    status = subprocess.run(
        [sys.executable, "-m", "met2net.cli", "status", str(run)], capture_output=True, text=True, cwd=ROOT, timeout=60
    ).stdout
    assert status.count("COMPLETED") == 2
