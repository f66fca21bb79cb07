"""tools/gpu_smoke.sh run for real on the CPU (``SMOKE_REHEARSAL=1``: gloo, as if there were 2 GPUs): every way it
launches training (one process; torchrun with 2 ranks; 2 processes started as ``--gpu-bind=single:1`` tasks are),
the shards it converts, its report, resume check, consolidation and evaluation. No GPU has run the script yet; this
is what a GPU run needs besides the GPU (a wrong resume check here once failed every configuration)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.test_train_cli import ROOT

CONFIGS = ["zero3-bf16", "2gpu-node-zero3-fp32", "2gpu-task-zero1-bf16", "shards-zero2-bf16"]
TINY_MODEL = "model.in_frames=2 model.out_frames=2 model.hid_s=4 model.hid_t=16 model.num_translator_blocks=1"


@pytest.mark.slow
@pytest.mark.distributed
def test_the_smoke_script_trains_resumes_consolidates_and_evaluates_on_every_launch_path(tmp_path):
    env = {
        **os.environ,
        "SMOKE_REHEARSAL": "1",
        "SMOKE_DIR": str(tmp_path),
        "SMOKE_STEPS": "7",  # the report counts steps after its 5 warm-up steps
        "SMOKE_ONLY": " ".join(CONFIGS),
        "SMOKE_OVERRIDES": f"{TINY_MODEL} training.batch_size=4",
    }
    out = subprocess.run(["bash", str(ROOT / "tools/gpu_smoke.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "gpu_smoke: REHEARSAL on the CPU (gloo)" in out.stdout
    assert out.stdout.rstrip().endswith("gpu_smoke: all configurations trained, resumed, consolidated and evaluated")
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "configuration" not in line]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [CONFIGS[-1], *CONFIGS[:-1]]
    for row, ranks in zip(rows, [1, 1, 2, 2]):
        assert f" | {ranks} × " in row and float(row.split(" | ")[2]) > 0  # ranks, samples/s
    for name in CONFIGS:
        run = tmp_path / name
        assert (run / "consolidated/model.safetensors").stat().st_size > 0
        assert (run / "evaluation/metrics.csv").read_text().count("\n") > 1
    assert (tmp_path / "shards/stats.json").exists()
    cuda_tests = (tmp_path / "cuda-tests.log").read_text()  # selected and collected; on the CPU they skip
    assert " skipped" in cuda_tests and "failed" not in cuda_tests and "error" not in cuda_tests
