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
