"""The checkpoint manager: a resume never starts from step 0 while an intact checkpoint exists, never loads a
damaged one, and a failed or killed save loses nothing. Real training runs on one process (plain-PyTorch engine)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from met2net.config import load_config
from met2net.model.met2net import Met2Net
from met2net.train import run_train
from met2net.training import checkpoint
from met2net.training.checkpoint import CheckpointError, newest_intact, verify
from met2net.training.engine import Engine, LocalEngine
from tests.e2e.test_train_cli import ROOT, TINY, records

RUN = [
    *TINY,
    "training.schedule=implicit",
    "training.checkpoint_every=2",
    "training.keep_last=0",
    "training.progress=false",
    "model.drop_path=0.1",
]  # DropPath: the RNG state must come back too


def train(run: Path, *overrides: str):
    return run_train(load_config(ROOT / "configs/quickstart.yaml", [*RUN, f"run.dir={run}", *overrides]))


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "model.pt", weights_only=True)


def flip_a_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 6-step run with checkpoints at steps 2, 4 and 6."""
    run = tmp_path_factory.mktemp("whole") / "run"
    assert train(run).finished
    return run


def damaged_copy(finished: Path, tmp_path: Path, damage) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    damage(run / "checkpoints/implicit")
    return run


def resumes(run: Path) -> list[dict]:
    return [r for r in records(run) if r["split"] == "resume"]


@pytest.mark.parametrize(
    "damage",
    [
        "pointer missing",
        "pointer empty",
        "pointer names a missing step",
        "newest lost COMPLETE",
        "newest engine state altered",
        "newest model.pt truncated",
        "newest meta.json altered",
    ],
)
def test_resume_takes_the_newest_intact_checkpoint_never_step_0(finished, tmp_path, damage):
    def apply(stage: Path) -> None:
        if damage == "pointer missing":
            (stage / "latest").unlink()
        elif damage == "pointer empty":
            (stage / "latest").write_text("")
        elif damage == "pointer names a missing step":
            (stage / "latest").write_text("step_9")
        elif damage == "newest lost COMPLETE":
            (stage / "step_6/COMPLETE").unlink()
        elif damage == "newest engine state altered":
            flip_a_byte(stage / "step_6/engine.pt")
        elif damage == "newest model.pt truncated":
            path = stage / "step_6/model.pt"
            path.write_bytes(path.read_bytes()[:-64])
        else:
            meta = json.loads((stage / "step_6/meta.json").read_text())
            (stage / "step_6/meta.json").write_text(json.dumps({**meta, "step": 7}, indent=2))

    run = damaged_copy(finished, tmp_path, apply)
    intact = damage.startswith("pointer")
    result = train(run)
    assert result.finished and result.step == 6
    [resume] = resumes(run)
    assert resume["from"].endswith("step_6" if intact else "step_4")
    if not intact:  # said so, and steps 5 and 6 were trained again, bitwise as the first time
        warnings = [r["message"] for r in records(run) if r["split"] == "checkpoint_warning"]
        assert len(warnings) == 1 and "skipping step_6" in warnings[0], warnings
        a, b = weights(finished / "checkpoints/implicit/step_6"), weights(run / "checkpoints/implicit/step_6")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert verify(run / "checkpoints/implicit/step_6") == []
    trained = [r["step"] for r in records(run)[len(records(finished)) :] if r["split"] == "train"]
    assert trained == ([] if intact else [6])  # log_every=2: step 6 logged; nothing from step 1


def test_no_intact_checkpoint_is_an_error_naming_them(finished, tmp_path):
    def apply(stage: Path) -> None:
        for step in (2, 4, 6):
            flip_a_byte(stage / f"step_{step}/engine.pt")

    run = damaged_copy(finished, tmp_path, apply)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*step_6 \(engine.pt was altered.*step_2"):
        train(run)
    assert [r for r in records(run) if r["split"] == "start"] == [
        r for r in records(finished) if r["split"] == "start"
    ]  # did not start


def test_stop_at_a_checkpoint_step_writes_one_checkpoint(tmp_path, monkeypatch):
    """A stop request that comes at a step the cadence already checkpointed reuses that checkpoint."""
    saves = []
    real = checkpoint.CheckpointManager.save
    monkeypatch.setattr(
        checkpoint.CheckpointManager,
        "save",
        lambda self, step, *a, **k: saves.append(step) or real(self, step, *a, **k),
    )
    monkeypatch.setattr("met2net.training.preemption._early", ["SIGUSR1"])  # as if signalled during start-up
    result = train(tmp_path / "run", "training.checkpoint_every=1")
    assert (result.exit_code, result.step, result.stopped_by) == (75, 1, "SIGUSR1")
    assert saves == [1]
    # the run is over: a late time-limit warning can no longer kill the process on its way out
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN == signal.getsignal(signal.SIGUSR2)


def test_save_removes_leftovers_of_killed_saves_and_prunes(tmp_path, small_cfg):
    stage = tmp_path / "checkpoints/stage1"
    for name in (".step_3.partial", ".step_2.deleting", ".step_5.replaced"):
        (stage / name).mkdir(parents=True)
        (stage / name / "model.pt").write_bytes(b"half")
    model = Met2Net(small_cfg.model)
    opt = torch.optim.Adam(model.parameters())
    engine = LocalEngine(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 0.0)
    manager = checkpoint.CheckpointManager(stage, keep_last=1)
    progress = {"step": 1, "epoch": 0, "sampler": {}, "rng": torch.get_rng_state()}
    for step in (1, 2):
        manager.save(step, engine, model, {**progress, "step": step}, {"schedule": "stage1"})
    assert sorted(p.name for p in stage.iterdir()) == ["latest", "step_2"]
    assert verify(stage / "step_2") == [] and newest_intact(stage) == stage / "step_2"
    assert json.loads((stage / "step_2/meta.json").read_text())["files"].keys() == {
        "engine.pt",
        "model.pt",
        "rng_rank0.pt",
        "batchnorm_rank0.pt",
    }


def test_the_local_engine_is_an_engine(small_cfg):
    model = Met2Net(small_cfg.model)
    opt = torch.optim.Adam(model.parameters())
    assert isinstance(LocalEngine(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 0.0), Engine)
    import deepspeed

    members = [m for m in Engine.__dict__ if not m.startswith("_")] + ["module"]
    assert [m for m in members if not hasattr(deepspeed.DeepSpeedEngine, m) and m != "module"] == []
