"""`met2net train` end to end in a real subprocess: stage one, then stage two from it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.in_frames=2",
    "model.out_frames=2",
    "model.hid_s=4",
    "model.hid_t=16",
    "model.grid=[16,32]",
    "model.num_translator_blocks=1",
    "training.max_steps=6",
    "training.batch_size=4",
    "training.val_every=3",
    "training.val_batches=2",
    "training.log_every=2",
    "data.train_years=[2010]",
    "data.val_years=[2011]",
    "data.test_years=[]",
    "data.step_hours=24",
    "data.source=synthetic",
]


def train(run_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "met2net.cli",
        "train",
        str(ROOT / "configs/quickstart.yaml"),
        *TINY,
        f"run.dir={run_dir}",
        "training.progress=false",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path, schedule: str) -> dict[str, torch.Tensor]:
    stage = run_dir / "checkpoints" / schedule
    return torch.load(stage / (stage / "latest").read_text() / "model.pt", weights_only=True)


@pytest.mark.slow
def test_stage_one_then_stage_two(tmp_path):
    run = tmp_path / "run"
    one = train(run, "training.schedule=stage1")
    assert one.returncode == 0, one.stderr
    ckpt = run / "checkpoints/stage1/step_6"
    assert (ckpt / "COMPLETE").exists() and (run / "config.yaml").exists()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["schedule"] == "stage1" and len(meta["stats"]["mean"]) == 5
    two = train(run, "training.schedule=stage2")
    assert two.returncode == 0, two.stderr
    log = records(run)
    train_steps = [r["step"] for r in log if r["split"] == "train" and r["schedule"] == "stage2"]
    assert train_steps == [2, 4, 6]
    vals = [r for r in log if r["split"] == "val"]
    assert [r["schedule"] for r in vals] == ["stage1", "stage1", "stage2", "stage2"]
    assert all(r["loss"] > 0 and r["samples"] == 8 for r in vals)
    assert all({"lr", "samples_per_s", "loss"} <= set(r) for r in log if r["split"] == "train")
    w1, w2 = weights(run, "stage1"), weights(run, "stage2")
    for k in w1:  # stage two leaves the codecs alone; their copies start as stage one's last trained codecs
        if k.startswith(("encoders_q", "decoders_q")):
            assert torch.equal(w1[k], w2[k]), k
        elif k.startswith(("encoders_k", "decoders_k")):
            assert torch.equal(w1[k.replace("_k.", "_q.", 1)], w2[k]), k
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if k.startswith("translator_q"))


@pytest.mark.slow
def test_stage_two_refuses_to_start_without_stage_one(tmp_path):
    out = train(tmp_path / "empty", "training.schedule=stage2")
    assert out.returncode == 2
    assert "checkpoints/stage1/latest is missing" in out.stderr
    assert not (tmp_path / "empty" / "checkpoints").exists()


@pytest.mark.slow
def test_implicit_bf16_trains(tmp_path):
    out = train(tmp_path / "bf16", "training.schedule=implicit", "training.precision=bf16")
    assert out.returncode == 0, out.stderr
    losses = [r["loss"] for r in records(tmp_path / "bf16") if r["split"] == "train"]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses(tmp_path):
    """training.compile=true: the same train and validation losses as eager within 1e-5 relative (inductor fuses
    and reorders float operations: not bitwise), and checkpoints with the same keys. DropPath off: compiled random
    draws are not eager's. Compiling takes minutes on 2 CPU cores the first time (inductor caches its kernels)."""
    common = ["training.schedule=implicit", "model.drop_path=0", "training.max_steps=3", "training.log_every=1"]
    runs = {c: tmp_path / c for c in ("false", "true")}
    for c, run in runs.items():
        out = train(run, *common, f"training.compile={c}", timeout=1200)
        assert out.returncode == 0, out.stderr[-3000:]
    logs = {c: [r for r in records(run) if r["split"] in ("train", "val")] for c, run in runs.items()}
    assert [r["split"] for r in logs["true"]] == [r["split"] for r in logs["false"]] == ["train"] * 3 + ["val"]
    for eager, compiled in zip(logs["false"], logs["true"], strict=True):
        for key in ("loss", "rec", "latent") if eager["split"] == "train" else ("loss", "forecast_mse"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-5), (eager["step"], key)
    assert weights(runs["true"], "implicit").keys() == weights(runs["false"], "implicit").keys()
