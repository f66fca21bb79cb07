"""One run per run directory (a second ``met2net train`` there is refused, naming the holder, and touches nothing; a
re-run after the holder ended or was killed proceeds), and ranks whose torchrun or mpirun was killed stop themselves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from met2net.distributed.env import free_port
from tests.distributed.harness import ROOT
from tests.distributed.test_train_launchers import BIN
from tests.e2e.test_train_cli import TINY, train


def _wait_for_training(run: Path, proc: subprocess.Popen, log: Path, deadline_s: float = 600) -> None:
    """Until ``proc`` has logged a training step (a bounded wait for start-up, not a measure of speed)."""
    deadline = time.monotonic() + deadline_s
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and '"split": "train"' in metrics.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_run_in_a_run_directory_in_use_is_refused_and_touches_nothing(tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    long = ["training.schedule=stage1", "training.max_steps=100000", "training.epochs=0", "training.log_every=1"]
    cmd = [sys.executable, "-m", "met2net.cli", "train", str(ROOT / "configs/quickstart.yaml"), *TINY]
    cmd += [f"run.dir={run}", "training.progress=false", *long]
    with log.open("w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ})
    try:
        _wait_for_training(run, first, log)
        config = (run / "config.yaml").read_text()
        second = train(run, "training.schedule=stage1", "training.lr=0.5")  # another config: it would rewrite it
        assert second.returncode == 2, second.stderr[-3000:]
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "is in use by another met2net run" in lines[0], second.stderr
        assert f"pid {first.pid}" in lines[0] and f"kill {first.pid}" in lines[0]
        assert first.poll() is None  # the first run goes on
        assert (run / "config.yaml").read_text() == config
        starts = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "start"]
        assert len(starts) == 1
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock
        first.wait(timeout=60)
    rerun = train(run, "training.schedule=stage1", "training.max_steps=2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]


LAUNCHERS = {
    "torchrun": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable],
    "mpirun": [str(BIN / "mpirun"), "-n", "2", sys.executable],  # Open MPI 5 leaves its ranks running when killed
}


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_ranks_whose_launcher_is_killed_checkpoint_and_stop(tmp_path, name):
    run, log = tmp_path / "run", tmp_path / f"{name}.log"
    cmd = [*LAUNCHERS[name], "-m", "met2net.cli", "train", str(ROOT / "configs/quickstart.yaml"), *TINY]
    cmd += [f"run.dir={run}", "training.progress=false", "training.schedule=stage1", "deepspeed.zero_stage=2"]
    cmd += ["training.max_steps=100000", "training.epochs=0", "training.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(free_port())}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with log.open("w") as out:
        launcher = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    ranks: list[psutil.Process] = []
    try:
        _wait_for_training(run, launcher, log)
        ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "met2net.cli" in p.cmdline()]
        assert len(ranks) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=60)
        gone, alive = psutil.wait_procs(ranks, timeout=300)  # a step, a checkpoint and the exit; hung: minutes
        assert alive == [], f"ranks {[p.pid for p in alive]} still run after {name} was killed"
    finally:
        for p in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    stop = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "preempted"]
    assert len(stop) == 1 and stop[0]["reason"] == "signal", log.read_text()[-3000:]
    assert (run / f"checkpoints/stage1/step_{stop[0]['step']}/COMPLETE").exists()
