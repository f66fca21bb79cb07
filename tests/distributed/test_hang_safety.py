"""Hang safety on 2 real ranks: every process group waits ``distributed.timeout_s``, not torch's 30 minutes; a rank
that fails ends the job at once, naming itself and the cause; a rank that stops makes the other fail within the
timeout."""

from __future__ import annotations

import contextlib
import hashlib
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
from tests.distributed.harness import ROOT, run_ranks
from tests.distributed.test_train_launchers import BIN, launch
from tests.e2e.test_train_cli import TINY

TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
TIMEOUT_S = 20  # distributed.timeout_s in these tests
# Start-up of two ranks on a loaded 2-core machine takes tens of seconds; no hang ends within minutes.
MARGIN_S = 120


def _deepspeed_group_timeouts(rank: int, world_size: int) -> list[float]:
    import deepspeed

    model = torch.nn.Linear(4, 4)
    config = {"train_batch_size": 2, "zero_optimization": {"stage": 2}, "gradient_clipping": 0.0}
    deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters()), config=config)
    from met2net.compat.torch_distributed import group_timeouts

    return group_timeouts()


@pytest.mark.distributed
def test_deepspeeds_own_groups_wait_the_configured_timeout(tmp_path):
    """DeepSpeed clones the world group for ZeRO without a timeout; torch would give the clone 30 minutes (gloo)."""
    timeouts = run_ranks(_deepspeed_group_timeouts, 2, tmp_path)
    for groups in timeouts:
        assert len(groups) >= 2  # the world group and DeepSpeed's clone of it
        assert groups == [300.0] * len(groups)  # the harness's init_process_group default, distributed.timeout_s


def _command(run: Path, *overrides: str) -> list[str]:
    return [
        *TORCHRUN,
        "-m",
        "met2net.cli",
        "train",
        str(ROOT / "configs/quickstart.yaml"),
        *TINY,
        f"run.dir={run}",
        "training.progress=false",
        "training.schedule=stage1",
        "deepspeed.zero_stage=2",
        f"distributed.timeout_s={TIMEOUT_S}",
        *overrides,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(free_port())}


def _without_checksums(ckpt: Path) -> None:
    """Make ``ckpt`` a format-1 checkpoint (written before checksums, still loaded): nothing vouches for its files,
    so a damaged shard is found only when a rank loads it."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta.pop("files")
    meta["format"] = 1
    text = json.dumps(meta, indent=2)
    (ckpt / "meta.json").write_text(text)
    (ckpt / "COMPLETE").write_text(hashlib.sha256(text.encode()).hexdigest())


@pytest.mark.distributed
def test_a_rank_that_cannot_load_its_shard_ends_the_job_naming_itself_and_the_file(tmp_path):
    run = tmp_path / "run"
    launch(TORCHRUN, run, "training.schedule=stage1", "deepspeed.zero_stage=2")
    ckpt = run / "checkpoints/stage1/step_6"
    _without_checksums(ckpt)
    shard = ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    started = time.monotonic()
    out = subprocess.run(
        _command(run, "training.max_steps=9"),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=TIMEOUT_S + MARGIN_S + 600,  # the bound asserted below; this only keeps a hang from blocking the suite
    )
    elapsed = time.monotonic() - started
    assert out.returncode != 0
    assert elapsed < TIMEOUT_S + MARGIN_S, f"took {elapsed:.0f} s: {out.stderr[-3000:]}"
    assert "met2net: rank 1 of 2" in out.stderr, out.stderr[-3000:]
    assert f"rank 1 could not load it: {shard.name} truncated" in out.stderr, out.stderr[-3000:]


def _ranks(torchrun: subprocess.Popen) -> dict[str, psutil.Process]:
    return {
        p.environ().get("RANK"): p
        for p in psutil.Process(torchrun.pid).children(recursive=True)
        if "met2net.cli" in " ".join(p.cmdline())
    }


@pytest.mark.distributed
def test_a_stopped_rank_makes_the_other_fail_within_the_timeout(tmp_path):
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    cmd = _command(run, "training.max_steps=100000", "training.epochs=0", "training.log_every=1")
    with log.open("w") as out:
        torchrun = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    ranks: dict[str, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 600
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and '"split": "train"' in metrics.read_text()):
            assert time.monotonic() < deadline and torchrun.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        ranks = _ranks(torchrun)
        assert set(ranks) == {"0", "1"}
        ranks["1"].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        gone, _ = psutil.wait_procs([ranks["0"]], timeout=TIMEOUT_S + MARGIN_S)
        waited = time.monotonic() - stopped
        assert gone, f"rank 0 still running {waited:.0f} s after rank 1 stopped"
        assert waited >= TIMEOUT_S - 1  # it did wait for rank 1 first, as long as it was told
    finally:
        for p in ranks.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        torchrun.kill()
        torchrun.wait(timeout=60)
    text = log.read_text()
    assert "met2net: rank 0 of 2" in text and f"distributed.timeout_s={TIMEOUT_S} s" in text, text[-3000:]


@pytest.mark.distributed
def test_a_rank_that_fails_at_start_up_ends_the_job_within_the_timeout(tmp_path):
    """Rank 1 of 2 stops before the process group forms (here: a launch variable out of range, as a broken prolog
    would set it); rank 0, left waiting at the rendezvous, ends within distributed.timeout_s with one line naming
    itself, the address and the setting, not torch's store traceback."""
    port = str(free_port())
    cmd = _command(tmp_path / "run")[len(TORCHRUN) :]  # the same train command, each rank started by hand
    ranks = {}
    for rank, local_rank in ((0, "0"), (1, "5")):
        env = {
            **_env(),
            "RANK": str(rank),
            "LOCAL_RANK": local_rank,
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        ranks[rank] = subprocess.Popen(
            [sys.executable, *cmd], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    started = time.monotonic()
    out = {rank: proc.communicate(timeout=TIMEOUT_S + MARGIN_S + 600) for rank, proc in ranks.items()}
    elapsed = time.monotonic() - started
    assert ranks[1].returncode == 2 and "LOCAL_RANK=5 must lie in [0, LOCAL_WORLD_SIZE=2)" in out[1][1], out[1][1]
    assert ranks[0].returncode == 2, out[0][1][-3000:]
    assert elapsed < TIMEOUT_S + MARGIN_S, f"took {elapsed:.0f} s"
    line = out[0][1].strip().splitlines()[-1]
    assert line.startswith("met2net: error: rank 0 of 2 on ") and f"127.0.0.1:{port}" in line, out[0][1][-3000:]
    assert f"within distributed.timeout_s={TIMEOUT_S} s" in line and "Traceback" not in out[0][1]
