"""tools/staged_study.py reads an evaluation's scores whatever its lead unit: hours, or months for monthly data
(the real-data study stopped with KeyError 'lead_hours' before)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import staged_study  # noqa: E402


@pytest.mark.parametrize(("column", "unit"), [("lead_hours", "h"), ("lead_months", "months")])
def test_scores_are_read_in_the_evaluations_lead_unit(tmp_path, column, unit):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        f"variable,{column},metric,model,value\n"
        "air,1,rmse_w,met2net,1.5\nair,2,rmse_w,persistence,2.5\nair,1,mse,met2net,2.25\n"
    )
    assert staged_study.lead_column(csv) == column
    assert staged_study.LEAD_COLUMNS[column] == unit
    scores = staged_study.read_scores(csv)
    assert scores[("met2net", "rmse_w", "air", 1)] == 1.5
    assert scores[("persistence", "rmse_w", "air", 2)] == 2.5


def test_rounds_share_their_steps_between_the_stages_as_the_split_says():
    """Equal compute: every variant sums to --steps; the quick start's stage_steps (60, 120) give the 1:2 split."""
    split = staged_study.config_split({"stage1": 60, "stage2": 120})
    assert split == (1, 2)
    plans = dict(staged_study.variants(360, [1, 2, 3], split=split))
    assert plans["staged_2r"] == [("stage1", 60), ("stage2", 120)] * 2
    assert plans["staged_3r"] == [("stage1", 40), ("stage2", 80)] * 3
    assert all(sum(n for _, n in stages) == 360 for stages in plans.values())
    assert staged_study.config_split({}) == (1, 1)
    with pytest.raises(SystemExit, match="multiple of 21"):
        staged_study.variants(360, [7], split=(1, 2))
