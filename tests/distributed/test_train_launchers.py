"""`met2net train` on 2 real ranks through the launchers users run: torchrun and mpirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from met2net.distributed.env import free_port
from tests.distributed.harness import ROOT
from tests.e2e.test_train_cli import TINY

BIN = Path(sys.executable).parent


def launch(launcher: list[str], run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "MASTER_PORT": str(free_port()),
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    module = [] if launcher[-1] == "--module" else ["-m"]
    cmd = [
        *launcher,
        *module,
        "met2net.cli",
        "train",
        str(ROOT / "configs/quickstart.yaml"),
        *TINY,
        f"run.dir={run_dir}",
        "training.progress=false",
        *overrides,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["torchrun", "mpirun", "deepspeed"])
def test_two_rank_zero_training_then_stage_two(tmp_path, launcher):
    cmd = {
        "torchrun": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable],
        "mpirun": [str(BIN / "mpirun"), "-n", "2", sys.executable],
        "deepspeed": [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module"],
    }[launcher]
    run = tmp_path / "run"
    out = launch(cmd, run, "training.schedule=stage1", "deepspeed.zero_stage=3")
    assert "stage1: 6 steps on 2 rank(s)" in out.stdout
    start = next(r for r in records(run) if r["split"] == "start")
    assert start["world_size"] == 2 and start["engine"] == "deepspeed"
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["train_batch_size"] == 4 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["zero_optimization"]["stage"] == 3
    report = start["startup"]  # the rank → host → device map, gathered from both ranks before training
    assert [(r["rank"], r["local_rank"], r["device"]) for r in report["ranks"]] == [(0, 0, "cpu"), (1, 1, "cpu")]
    assert report["deepspeed_config"] == ds and report["versions"]["deepspeed"]
    assert "met2net: 2 rank(s), precision fp32" in out.stdout
    weights = torch.load(run / "checkpoints/stage1/step_6/model.pt", weights_only=True)
    assert weights["translator_q.conv_in.weight"].shape == (16, 8, 1, 1)  # gathered, not a ZeRO-3 partition
    launch(cmd, run, "training.schedule=stage2", "deepspeed.zero_stage=1")
    after = torch.load(run / "checkpoints/stage2/step_6/model.pt", weights_only=True)
    for k in weights:  # the codecs stay; their copies start as stage one's last trained codecs
        if k.startswith(("encoders_q", "decoders_q")):
            assert torch.equal(weights[k], after[k]), k
        elif k.startswith(("encoders_k", "decoders_k")):
            assert torch.equal(weights[k.replace("_k.", "_q.", 1)], after[k]), k
    val = [r for r in records(run) if r["split"] == "val"]
    assert len(val) == 4 and all(r["samples"] == 8 for r in val)  # both ranks' windows counted


@pytest.mark.distributed
def test_bf16_under_zero2_trains_with_fp32_weights_and_momentum_copies(tmp_path):
    """bf16 is autocast around the forward: losses close to fp32's, every stored tensor (momentum copies
    included, whose EMA steps would round away in bf16) still fp32."""
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
    runs = {p: tmp_path / p for p in ("fp32", "bf16")}
    # the tolerances below hold for 6 steps at lr 2e-3; the quick start's 8e-3 lets rounding differences grow faster
    common = ("training.schedule=implicit", "deepspeed.zero_stage=2", "training.lr=2e-3")
    for precision, run in runs.items():
        launch(torchrun, run, *common, f"training.precision={precision}")
    assert json.loads((runs["bf16"] / "deepspeed.json").read_text())["bf16"] == {"enabled": False}
    train = {p: [r["loss"] for r in records(run) if r["split"] == "train"] for p, run in runs.items()}
    assert len(train["bf16"]) == 3 and all(abs(a - b) < 0.05 * abs(b) for a, b in zip(train["bf16"], train["fp32"]))
    assert train["bf16"] != train["fp32"]  # autocast did run in bf16
    weights = {
        p: torch.load(run / "checkpoints/implicit/step_6/model.pt", weights_only=True) for p, run in runs.items()
    }
    assert all(v.dtype == torch.float32 for k, v in weights["bf16"].items() if v.is_floating_point())
    moved = [k for k in weights["bf16"] if k.startswith("translator_k") and weights["bf16"][k].is_floating_point()]
    assert moved and all(torch.allclose(weights["bf16"][k], weights["fp32"][k], rtol=0.05, atol=1e-3) for k in moved)
