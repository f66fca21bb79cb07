"""A run's log: validation records the forecast error per variable, `best` is chosen by it, and with
`training.tensorboard: true` TensorBoard reads back the same scalars as metrics.jsonl. One 3-step run, in-process."""

from __future__ import annotations

import json
import math
import os
import platform
import socket

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from met2net.config import load_config
from met2net.train import run_train
from met2net.training.run_log import RunLog
from tests.e2e.test_train_cli import ROOT, TINY, records


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tb") / "run"
    overrides = [
        *TINY,
        "training.schedule=implicit",
        "training.max_steps=3",
        "training.val_every=1",
        "training.log_every=1",
        "training.checkpoint_every=1",
        "training.keep_last=1",
        "training.tensorboard=true",
        "training.progress=false",
        f"run.dir={run}",
    ]
    cfg = load_config(ROOT / "configs/quickstart.yaml", overrides)
    assert run_train(cfg).finished
    return run, cfg


def test_validation_records_the_forecast_error_per_variable(run):
    run, cfg = run
    vals = [r for r in records(run) if r["split"] == "val"]
    assert [r["step"] for r in vals] == [1, 2, 3]
    for r in vals:
        per_variable = [r[f"forecast_mse/{v}"] for v in cfg.model.variables]
        assert math.isclose(sum(per_variable) / len(per_variable), r["forecast_mse"], rel_tol=1e-6)
    best = min(vals, key=lambda r: r["forecast_mse"])["step"]  # training.best_by defaults to forecast_mse
    stage = run / "checkpoints/implicit"
    assert (stage / "best").read_text() == f"step_{best}"
    meta = json.loads((stage / f"step_{best}" / "meta.json").read_text())
    assert meta["val"]["forecast_mse"] == min(r["forecast_mse"] for r in vals)


def test_the_start_record_holds_the_startup_report(run):
    """Where the run ran and with what: rank → host → device, versions, precision; a CPU run picks the CPU and
    runs without DeepSpeed (one process), which the report says."""
    run, cfg = run
    start = next(r for r in records(run) if r["split"] == "start")
    report = start["startup"]
    assert report["ranks"] == [
        {
            "rank": 0,
            "host": socket.gethostname(),
            "local_rank": 0,
            "device": "cpu",
            "layout": "cpu",
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "all"),
        }
    ]
    assert report["precision"] == cfg.training.precision and report["deepspeed_config"] is None
    assert report["tf32"] is None  # TF32 is an NVIDIA GPU's: recorded there only
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["cuda"] is None and report["versions"]["nccl"] is None
    assert not any("peak_memory_gib" in r for r in records(run))  # GPU memory is logged on GPUs only
    assert start["host_memory_kept"] is (platform.libc_ver()[0] == "glibc")  # training.keep_host_memory


def test_tensorboard_reads_back_the_logged_scalars(run):
    run, cfg = run
    board = run / "tensorboard" / "implicit"
    assert len(list(board.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/rec", "train/latent", "train/lr", "val/loss", "val/forecast_mse"} <= tags
    assert {f"val/forecast_mse/{v}" for v in cfg.model.variables} <= tags
    assert not any(t.startswith(("start/", "resume/")) or t.endswith(("/step", "/time")) for t in tags)
    for r in records(run):
        if r["split"] not in ("train", "val"):
            continue
        for key in ("loss", "forecast_mse/t2m") if r["split"] == "val" else ("loss", "lr"):
            (event,) = [e for e in events.Scalars(f"{r['split']}/{key}") if e.step == r["step"]]
            assert math.isclose(event.value, r[key], rel_tol=1e-6)  # TensorBoard keeps float32


def test_a_resumed_log_hides_the_steps_it_logs_again(tmp_path):
    """The first record after a restart starts a new event file that purges the old one's events from that step."""
    board = tmp_path / "tensorboard"
    first = RunLog(tmp_path / "metrics.jsonl", board)
    for step in (1, 2, 3):
        first.write({"split": "train", "step": step, "time": 1000.0 + step, "loss": 1.0})
    first.close()
    again = RunLog(tmp_path / "metrics.jsonl", board)
    for step in (3, 4):
        again.write({"split": "train", "step": step, "time": 2000.0 + step, "loss": 2.0})
    again.close()
    events = EventAccumulator(str(board))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5


def test_the_start_up_line_says_what_tf32_allowed():
    """On a GPU "fp32" convolutions may run in TF32 (PyTorch's default for cuDNN): the printed line says so."""
    from met2net.training.startup import format_report

    rank = {"rank": 0, "host": "h", "local_rank": 0, "device": "cuda:0", "layout": "one-gpu", "visible": "0"}
    versions = {"torch": "2", "cuda": "12", "nccl": None, "deepspeed": None}
    report = {"ranks": [rank], "versions": versions, "precision": "fp32", "deepspeed_config": None}
    first = {}
    for tf32 in (None, {"cudnn": True, "matmul": False}, {"cudnn": False, "matmul": False}):
        first[str(tf32)] = format_report({**report, "tf32": tf32}).splitlines()[0]
    assert "TF32" not in first["None"]
    assert "precision fp32, TF32 for cudnn, torch 2" in first["{'cudnn': True, 'matmul': False}"]
    assert "TF32 for nothing" in first["{'cudnn': False, 'matmul': False}"]
