"""Exact resume: a run stopped after a checkpoint and started again continues bitwise as if uninterrupted."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.test_train_launchers import BIN, launch

OVERRIDES = [
    "training.checkpoint_every=3",
    "training.log_every=1",
    "model.drop_path=0.1",
]  # DropPath draws random numbers: the RNG state must be restored too


def losses(run: Path, schedule: str | None = None) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if r["split"] == "train" and schedule in (None, r["schedule"])]


def interrupt_after_first_checkpoint(src: Path, dst: Path, schedule: str) -> None:
    """What a preempted run leaves behind: the step-3 checkpoint is the latest complete one."""
    shutil.copytree(src, dst)
    stage = dst / "checkpoints" / schedule
    shutil.rmtree(stage / "step_6")
    (stage / "latest").write_text("step_3")
    log = [
        line
        for line in (dst / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["schedule"] != schedule or json.loads(line)["step"] <= 3
    ]  # earlier stages stay
    (dst / "metrics.jsonl").write_text("\n".join(log) + "\n")


@pytest.mark.distributed
@pytest.mark.parametrize(
    "engine, schedule",
    [
        ("local", "implicit"),
        ("local", "stage1"),
        ("zero1", "implicit"),
        ("zero2", "implicit"),
        ("zero3", "implicit"),
        ("zero3", "stage1"),
        ("zero2", "stage2"),
    ],
)
def test_resume_continues_bitwise(tmp_path, engine, schedule):
    if engine == "local":
        cmd, extra = [sys.executable], []
    else:
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
        extra = [f"deepspeed.zero_stage={engine[-1]}", "deepspeed.stage3_param_persistence_threshold=0"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    if schedule == "stage2":  # starts from the run directory's stage-one checkpoint
        launch(cmd, whole, *OVERRIDES, *extra, "training.schedule=stage1")
    extra.append(f"training.schedule={schedule}")
    launch(cmd, whole, *OVERRIDES, *extra)
    interrupt_after_first_checkpoint(whole, resumed, schedule)
    launch(cmd, resumed, *OVERRIDES, *extra)
    assert [s for s, _ in losses(resumed, schedule)] == [1, 2, 3, 4, 5, 6]
    assert losses(resumed) == losses(whole)  # bitwise, steps 4–6 computed after the resume
    a = torch.load(whole / f"checkpoints/{schedule}/step_6/model.pt", weights_only=True)
    b = torch.load(resumed / f"checkpoints/{schedule}/step_6/model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (resumed / "metrics.jsonl").read_text()
    assert '"split": "resume"' in log and "step_3" in log
