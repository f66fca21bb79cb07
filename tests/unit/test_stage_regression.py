"""A stage that ends with a worse validation forecast than the weights it started from says so, loudly."""

from __future__ import annotations

import json

from met2net.config import load_config
from met2net.train import run_train
from tests.e2e.test_train_cli import ROOT, TINY


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stage_two_that_ends_worse_is_reported(tmp_path, capsys):
    run = tmp_path / "run"
    common = [*TINY, f"run.dir={run}", "training.progress=false", "training.max_steps=4"]
    assert run_train(load_config(ROOT / "configs/quickstart.yaml", [*common, "training.schedule=stage1"])).finished
    assert not [r for r in records(run) if r["split"] == "regression"]  # round one's stage one starts from nothing
    wreck = ["training.schedule=stage2", "training.lr=5.0", "training.min_lr=5.0", "training.warmup_steps=0"]
    result = run_train(load_config(ROOT / "configs/quickstart.yaml", [*common, *wreck]))
    assert result.finished
    stage2 = [r for r in records(run) if r["schedule"] == "stage2"]
    start = next(r for r in stage2 if r["split"] == "val_start")
    assert start["step"] == 0  # the weights it started from, validated first
    [regression] = [r for r in stage2 if r["split"] == "regression"]
    start_mse, end_mse = regression["worse"]["forecast_mse"]
    assert start_mse == start["forecast_mse"] and end_mse == result.val["forecast_mse"] > start_mse
    assert "stage2 ended with a worse validation forecast" in capsys.readouterr().err
