"""Preemption: a signal to one rank, or the time limit, stops every rank with a checkpoint and the
"requeue me" exit code; the run started again continues bitwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from met2net.distributed.env import free_port
from met2net.training.preemption import REQUEUE_EXIT_CODE
from tests.distributed.harness import ROOT
from tests.distributed.test_resume import losses
from tests.distributed.test_train_launchers import BIN, launch
from tests.e2e.test_train_cli import TINY

LONG = [
    "training.schedule=implicit",
    "training.max_steps=40",
    "training.log_every=1",
    "training.val_every=0",
    "training.epochs=0",
    "deepspeed.zero_stage=2",
]


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.distributed
def test_time_limit_checkpoints_and_asks_for_requeue(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "met2net.cli",
        "train",
        str(ROOT / "configs/quickstart.yaml"),
        *TINY,
        f"run.dir={tmp_path}",
        "training.progress=false",
        "training.time_limit=0.001",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == REQUEUE_EXIT_CODE, out.stderr[-2000:]
    assert "time limit" in out.stderr and "requeue me" in out.stderr
    stop = [r for r in records(tmp_path) if r["split"] == "preempted"]
    assert stop and stop[0]["reason"] == "time limit" and stop[0]["step"] == 1
    assert (tmp_path / "checkpoints/stage1/step_1/COMPLETE").exists()


@pytest.mark.distributed
def test_signal_to_one_rank_stops_all_and_resume_is_exact(tmp_path):
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
    whole, run = tmp_path / "whole", tmp_path / "run"
    launch(torchrun, whole, *LONG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(free_port())}
    cmd = [
        *torchrun,
        "-m",
        "met2net.cli",
        "train",
        str(ROOT / "configs/quickstart.yaml"),
        *TINY,
        f"run.dir={run}",
        "training.progress=false",
        *LONG,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not any(r["split"] == "train" and r["step"] >= 2 for r in records(run)):
        assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.05)
    rank1 = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "met2net.cli" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"
    ]
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "requeue me" in stderr  # torchrun reports its workers' exit code 75
    stop = [r for r in records(run) if r["split"] == "preempted"]
    assert len(stop) == 1 and stop[0]["reason"] == "signal" and stop[0]["step"] < 40
    meta = json.loads((run / f"checkpoints/implicit/step_{stop[0]['step']}/meta.json").read_text())
    assert meta["world_size"] == 2 and (run / f"checkpoints/implicit/step_{stop[0]['step']}/rng_rank1.pt").exists()
    launch(torchrun, run, *LONG)  # the requeued job: resumes and finishes
    assert losses(run) == losses(whole)
    # and the same final state: weights, momentum copies, BatchNorm statistics (which the losses do not show)
    a, b = (torch.load(r / "checkpoints/implicit/step_40/model.pt", weights_only=True) for r in (run, whole))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
