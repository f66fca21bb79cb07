"""`met2net scale run` on this machine: a sweep of real trainings under torchrun (1 rank, then a point that fails, then
2 gloo ranks) → results.csv, report and plots; run again, it skips every recorded point."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from met2net.scaling.timing import TWO_PASSES
from tests.distributed.harness import ROOT
from tests.e2e.test_train_cli import TINY

OK1, FAILS, OK2 = "r1x1-z0-mb2-ga1-fp32", "r1x1-z0-mb100000-ga1-fp32", "r1x2-z0-mb2-ga1-fp32"


def write_sweep(path: Path, points: list[dict], **extra) -> Path:
    sweep = {
        "config": str(ROOT / "configs/quickstart.yaml"),
        "overrides": [*TINY, "training.val_batches=1"],
        "warmup_steps": 1,
        "timed_steps": 2,
        "points": points,
        **extra,
    }
    path.write_text(yaml.safe_dump(sweep))
    return path


def scale_run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = env or {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "met2net.cli", "scale", "run", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def read_rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in csv.DictReader((out / "results.csv").open())}


@pytest.mark.slow
@pytest.mark.distributed
def test_local_sweep_records_each_point_goes_on_after_a_failure_and_skips_on_restart(tmp_path):
    points = [{"ranks": 1, "micro_batch": 2}, {"ranks": 1, "micro_batch": 100000}, {"ranks": 2, "micro_batch": 2}]
    sweep = write_sweep(tmp_path / "sweep.yaml", points)
    out = tmp_path / "out"
    run = scale_run(sweep, "-o", out)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]  # a point failed
    assert "failed point(s): " + FAILS in run.stdout
    rows = read_rows(out)
    assert [(n, r["status"]) for n, r in rows.items()] == [(OK1, "ok"), (FAILS, "failed"), (OK2, "ok")]
    assert "fewer than one batch" in rows[FAILS]["error"]  # the rank's own error line, from its log
    assert (out / rows[FAILS]["log"]).exists() and not (out / "points" / FAILS / "result.json").exists()

    one, two = rows[OK1], rows[OK2]
    assert (one["engine"], two["engine"]) == ("local", "deepspeed")  # one process without ZeRO: plain PyTorch
    assert (one["world_size"], two["world_size"], two["global_batch"]) == ("1", "2", "4")
    for r in (one, two):
        parts = [float(r[f"{p}_s"]) for p in ("data", "forward", "backward", "optimizer", "comm", "other")]
        assert min(parts[:4]) >= 0 and float(r["forward_s"]) > 0 and float(r["backward_s"]) > 0
        assert float(r["samples_per_s"]) == pytest.approx(int(r["global_batch"]) / float(r["step_s"]))
        assert float(r["peak_memory_mib"]) > 50 and len(r["first_losses"].split(";")) == 3  # warm-up + timed steps
        assert int(r["optimizer_bytes"]) == 2 * int(r["gradients_bytes"]) > 0  # Adam's two moments, ZeRO 0
        assert len(r["config_hash"]) == 12 and r["torch"] and r["deepspeed"] and r["hosts"]
        assert (out / r["log"]).exists() and (out / "points" / r["name"] / "result.json").exists()
        assert not (out / "points" / r["name"] / "run" / "checkpoints").exists()  # a sweep keeps no weights
    assert sum(float(one[f"{p}_s"]) for p in ("data", "forward", "backward", "optimizer", "comm", "other")) == (
        pytest.approx(float(one["step_s"]))
    )
    assert float(one["comm_s"]) == 0 and float(two["comm_s"]) > 0 and int(two["comm_calls"]) > 0
    assert one["parameters_bytes"] == two["parameters_bytes"]  # ZeRO 0 keeps every parameter on every rank
    assert len(two["peak_memory_per_rank_mib"].split(";")) == 2
    assert float(one["ring_passes_per_step"]) == 0 and float(two["ring_passes_per_step"]) > 0
    by_op = json.loads((out / "points" / OK2 / "result.json").read_text())["ranks"][0]["comm_calls_by_op_per_step"]
    passes = sum(n * (2 if op in TWO_PASSES else 1) for op, n in by_op.items())
    assert passes == pytest.approx(float(two["ring_passes_per_step"]))  # the timed steps' calls, an all-reduce twice

    report = (out / "report.md").read_text()
    assert "| 0 | 2 | 2 × 1 | 4 |" in report and "## Step-time split" in report
    assert f"| {FAILS} | exit code 1: met2net: error:" in report
    for name in ("throughput", "efficiency", "memory", "step_split"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 10_000

    before = (out / "results.csv").read_text()
    logs = {n: (out / r["log"]).stat().st_mtime_ns for n, r in rows.items()}
    again = scale_run(sweep, "-o", out, timeout=120)
    assert again.returncode == 1 and again.stdout.count("skipped") == 4, again.stdout  # 3 points + the summary
    assert (out / "results.csv").read_text() == before
    assert {n: (out / r["log"]).stat().st_mtime_ns for n, r in rows.items()} == logs  # nothing ran again
