"""tools/gpu_smoke.sh without a GPU: it says why and exits 0 having run nothing (it is never part of CI's pass
condition); and the arithmetic of its report (tools/gpu_smoke_report.py) on a made-up metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.e2e.test_train_cli import ROOT, TINY

sys.path.insert(0, str(ROOT / "tools"))
import gpu_smoke_report  # noqa: E402

on_a_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script would really run")


def smoke(tmp_path, nvidia_smi: str) -> subprocess.CompletedProcess:
    """The script with a stand-in ``nvidia-smi`` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/bash\n{nvidia_smi}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SMOKE_DIR": str(tmp_path / "runs")}
    return subprocess.run(["bash", str(ROOT / "tools/gpu_smoke.sh")], env=env, capture_output=True, text=True)


@on_a_gpu
def test_no_gpu_for_the_driver_skips(tmp_path):
    out = smoke(tmp_path, 'echo "No devices were found" >&2; exit 6')
    assert out.returncode == 0, out.stderr
    assert out.stdout == "gpu_smoke: SKIPPED: nvidia-smi finds no GPU: No devices were found (nothing was run)\n"
    assert not (tmp_path / "runs").exists()


@on_a_gpu
@pytest.mark.skipif(torch.version.cuda is not None, reason="needs the CPU build of torch")
def test_a_gpu_that_torch_cannot_use_skips(tmp_path):
    """A driver that lists a GPU, and a CPU build of torch: the reason names the build."""
    out = smoke(tmp_path, 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"')
    assert out.returncode == 0, out.stderr
    assert "gpu_smoke: SKIPPED: torch" in out.stdout and "is a CPU build" in out.stdout
    assert not (tmp_path / "runs").exists()


def test_report_rows_and_the_resume_check(tmp_path, capsys):
    ranks = [
        {"rank": 0, "host": "gpu001", "device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3"},
        {"rank": 1, "host": "gpu001", "device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3"},
    ]
    start = {"split": "start", "step": 0, "startup": {"ranks": ranks, "precision": "bf16"}}
    train = [{"split": "train", "step": s, "samples_per_s": 100.0 + s, "peak_memory_gib": 1.5} for s in range(1, 9)]
    # as the trainer logs a resumed run: its resume record, then its start record (met2net/training/loop.py)
    resumed = [{"split": "resume", "step": 8}, start, {"split": "train", "step": 9, "samples_per_s": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [start, *train, *resumed]))
    assert gpu_smoke_report.row(str(tmp_path), "zero1-bf16", "1e12") == 0
    line = capsys.readouterr().out
    # steps 6-8 after the warm-up: median 107 samples/s × 1 TFLOP = 107 TFLOP/s of 2 × 989.4 peak
    assert line.startswith("| zero1-bf16 | 2 × NVIDIA H100 80GB HBM3 (0→gpu001:cuda:0, 1→gpu001:cuda:0) | 107.0 |")
    assert "107.00 TFLOP/s, 5.4 % | 1.50 GiB |" in line
    assert gpu_smoke_report.resumed(str(tmp_path), "8") == 0
    assert gpu_smoke_report.resumed(str(tmp_path), "20") == 1


def test_flop_count_of_a_training_sample(capsys):
    assert gpu_smoke_report.flops(str(ROOT / "configs/quickstart.yaml"), [*TINY, "training.batch_size=2"]) == 0
    assert float(capsys.readouterr().out) > 0


@on_a_gpu
def test_the_device_checks_skip_without_a_gpu(tmp_path):
    """tools/device/checks.sh (the GPU checks as one run on a lent machine) says why and runs nothing where torch
    finds no GPU: no wheels installed, no bench, no smoke run."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "CHECK_DIR": str(tmp_path / "work"),
           "MET2NET_PYTHON": sys.executable}  # fmt: skip
    out = subprocess.run(["bash", str(ROOT / "tools/device/checks.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"checks: SKIPPED: torch {torch.__version__} finds no GPU (nothing was run)\n"
    assert (tmp_path / "out/summary.md").read_text() == out.stdout
    assert list((tmp_path / "work").iterdir()) == []
