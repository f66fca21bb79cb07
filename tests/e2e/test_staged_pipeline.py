"""The staged pipeline ends with a better forecaster than it started with (issue 12): round one's stage two used to
make the validation forecast several times worse, because the decoders stage one tuned could not read the
Translator that stage two moved. Short runs on the built-in data, scored on the validation year."""

from __future__ import annotations

import json

from met2net.config import load_config
from met2net.train import run_train
from tests.e2e.test_train_cli import ROOT, TINY


def stage_two_against_stage_one(tmp_path, *overrides: str) -> tuple[float, float, list[dict]]:
    """(stage one's final validation forecast MSE, stage two's, stage two's regression records)."""
    run = tmp_path / "run"
    common = [*TINY, f"run.dir={run}", "training.progress=false", "training.max_steps=12", "training.val_every=12"]
    common += ["training.val_batches=8", *overrides]
    one = run_train(load_config(ROOT / "configs/quickstart.yaml", [*common, "training.schedule=stage1"]))
    two = run_train(load_config(ROOT / "configs/quickstart.yaml", [*common, "training.schedule=stage2"]))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["schedule"] == "stage2" and r["split"] == "val_start")
    assert start["forecast_mse"] == one.val["forecast_mse"]  # stage two starts from stage one's last weights
    regressions = [r for r in records if r["split"] == "regression"]
    return one.val["forecast_mse"], two.val["forecast_mse"], regressions


def test_stage_two_does_not_end_worse_than_stage_one(tmp_path):
    one, two, regressions = stage_two_against_stage_one(tmp_path)
    assert two <= one and not regressions


def test_without_the_forecast_term_stage_two_ends_worse(tmp_path):
    """The counterpart that shows the test above can fail: stage two on the latent loss alone, as before."""
    one, two, regressions = stage_two_against_stage_one(tmp_path, "training.stage2_pred_loss_weight=0")
    assert two > one and regressions
