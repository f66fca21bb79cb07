"""The training hot path reads nothing back from the device per step: host reads of tensors are counted on
``torch.Tensor`` itself while real runs train in this process, and their number follows the log points, not the
steps. The train records keep the numbers of the step they are logged at; batches reach the device contiguous."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from met2net.config import load_config
from met2net.data.windows import Normalise
from met2net.train import run_train
from met2net.training import loop
from met2net.training.hot_path import StepMeter, to_device
from tests.e2e.test_train_cli import ROOT, TINY, records

# Every way Python code gets a tensor's value onto the host: each waits for the device on a GPU.
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
TORCH_OPTIM = "torch/optim/"


class HostReads:
    """Counts host reads of tensors, split into those made inside ``Trainer.train_step`` and elsewhere. torch's
    foreach Adam reads its step counters with ``.item()``: those are host (CPU) tensors whatever the parameters'
    device (on CUDA the fused Adam keeps them on the device and reads none); counted apart, and checked to be
    CPU tensors."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.counts: collections.Counter[str] = collections.Counter()
        self.in_step = False
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        train_step = loop.Trainer.train_step

        def step(trainer: loop.Trainer, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            self.in_step = True
            try:
                return train_step(trainer, x, y)
            finally:
                self.in_step = False

        monkeypatch.setattr(loop.Trainer, "train_step", step)

    def _counted(self, name: str, original):  # noqa: ANN202 - the wrapped method's own signature
        def read(tensor: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if TORCH_OPTIM in caller:
                assert tensor.device.type == "cpu", f"the optimizer read a {tensor.device} tensor"
                self.counts["optimizer counters"] += 1
            else:
                self.counts["step" if self.in_step else "outside steps"] += 1
            return original(tensor, *args, **kwargs)

        return read


def train_counting(monkeypatch: pytest.MonkeyPatch, run_dir, steps: int, log_every: int) -> collections.Counter:
    """The host reads of a fresh run of ``steps`` steps, start-up included (validation and checkpoint at the end
    only)."""
    overrides = [
        *TINY,
        "training.schedule=implicit",
        f"training.max_steps={steps}",
        f"training.log_every={log_every}",
        "training.val_every=0",
        "training.progress=false",
        f"run.dir={run_dir}",
    ]
    with monkeypatch.context() as patch:
        reads = HostReads(patch)
        assert run_train(load_config(ROOT / "configs/quickstart.yaml", overrides)).finished
    return reads.counts


def test_a_training_step_reads_nothing_from_the_device(tmp_path, monkeypatch):
    few = train_counting(monkeypatch, tmp_path / "few", steps=2, log_every=2)
    many = train_counting(monkeypatch, tmp_path / "many", steps=8, log_every=8)
    often = train_counting(monkeypatch, tmp_path / "often", steps=8, log_every=2)
    assert few["step"] == many["step"] == often["step"] == 0
    # one log point each: start-up, validation, the checkpoint and the log point read the same, however many steps
    assert few["outside steps"] == many["outside steps"] > 0
    assert often["outside steps"] - many["outside steps"] == 3  # three more log points, one read each
    assert many["optimizer counters"] == 4 * few["optimizer counters"] > 0  # the host step counters, per step
    train = [r for r in records(tmp_path / "often") if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]


@pytest.mark.distributed
def test_a_zero2_step_reads_nothing_from_the_device():
    """The same under DeepSpeed ZeRO-2 (one process, in a fresh interpreter: DeepSpeed starts once per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    counts = []
    for steps in (2, 8):
        cmd = [sys.executable, "-m", "tests.unit.test_hot_path", str(steps), "deepspeed.zero_stage=2"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        counts.append(json.loads(out.stdout.splitlines()[-1]))
    few, many = counts
    assert few.get("step", 0) == many.get("step", 0) == 0 and few["outside steps"] == many["outside steps"]


def test_the_meter_reads_the_latest_step_as_floats_and_counts_throughput(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0])
    monkeypatch.setattr("met2net.training.hot_path.time.perf_counter", lambda: next(clock))
    meter = StepMeter()  # t = 0
    meter.add({"loss": torch.tensor(9.0), "rec": torch.tensor(8.0)}, samples=4)
    assert meter.lap() == 1.0
    parts = {"loss": torch.tensor(0.1234567), "rec": torch.tensor(0.5, dtype=torch.bfloat16)}
    meter.add(parts, samples=4)
    assert meter.lap() == 2.0
    values = meter.read()  # the read's own wait (1 s) counts: 8 samples in 4 s
    assert values == {"samples_per_s": 2.0, "loss": float(parts["loss"]), "rec": 0.5}
    assert meter.samples == 0 and meter.seconds == 0.0


def test_batches_reach_the_cpu_contiguous_and_equal():
    batch = torch.randn(2, 6, 3, 4, 5)
    x = batch[:, :3]  # what the loaders give: a view into one (B, T_in + T_out, C, H, W) batch
    assert not x.is_contiguous()
    moved = to_device(x, torch.device("cpu"))
    assert moved.is_contiguous() and torch.equal(moved, x)
    mean, std = torch.randn(3, 4, 5), torch.rand(3, 4, 5) + 0.5
    kept = x.clone()
    normalised = to_device(x, torch.device("cpu"), Normalise(mean, std))
    assert normalised.is_contiguous() and torch.equal(normalised, (kept - mean) / std) and torch.equal(x, kept)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_reach_a_gpu_from_pinned_memory_without_waiting():
    x = torch.randn(2, 6, 3, 4, 5)[:, :3]
    moved = to_device(x, torch.device("cuda"))
    assert moved.is_cuda and moved.is_contiguous() and torch.equal(moved.cpu(), x)
    mean, std = torch.randn(3, 4, 5), torch.rand(3, 4, 5) + 0.5
    normalised = to_device(x, torch.device("cuda"), Normalise(mean, std).to(torch.device("cuda")))
    assert torch.equal(normalised.cpu(), (x - mean) / std)


if __name__ == "__main__":  # STEPS [OVERRIDE ...]: the host reads of one run, as JSON (the ZeRO-2 test above)
    TINY.extend(sys.argv[2:])
    with tempfile.TemporaryDirectory() as tmp:
        steps = int(sys.argv[1])
        print(json.dumps(train_counting(pytest.MonkeyPatch(), Path(tmp) / "run", steps, steps)))
