"""One model's test rmse_w against another's, per variable: the ratio of their rmse_w averaged over leads, and the
ratio at each lead — how docs/results.md compares rows of `tools/staged_study.py` studies (below 1: A is better).

    .venv/bin/python tools/compare_rows.py A/rows.csv "ROW A" B/rows.csv "ROW B" [--metric rmse_w]

ROW is a study's ``row`` column, e.g. ``implicit`` or ``staged_2r, after stage 4 (stage2)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from staged_study import ratio_over_leads, read_rows  # tools/, beside this script


def scores(path: Path, row: str, metric: str) -> dict[str, dict[int, float]]:
    """The model's ``metric`` of ``row`` in a study's rows.csv: variable → lead (hours, or months for monthly data)
    → value."""
    out: dict[str, dict[int, float]] = {}
    for (model, m, var, lead), value in read_rows(path)[0].get(row, {}).items():
        if model == "met2net" and m == metric:
            out.setdefault(var, {})[lead] = value
    if not out:
        raise SystemExit(f"{path}: no {metric} of the model in row {row!r}")
    return out


def compare(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> list[str]:
    """Per variable of ``a``: the ratio of the lead-averaged scores, then the ratio at each lead."""
    lines = []
    for var, by_lead in a.items():
        leads = sorted(by_lead)
        mean = ratio_over_leads(by_lead, b[var])
        per = [by_lead[t] / b[var][t] for t in leads]
        lines.append(
            f"{var}: {mean:.3f} over leads; {min(per):.3f}–{max(per):.3f} by lead ("
            + ", ".join(f"{t} {x:.3f}" for t, x in zip(leads, per))
            + ")"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("row_a")
    p.add_argument("b", type=Path)
    p.add_argument("row_b")
    p.add_argument("--metric", default="rmse_w")
    args = p.parse_args()
    print("\n".join(compare(scores(args.a, args.row_a, args.metric), scores(args.b, args.row_b, args.metric))))


if __name__ == "__main__":
    main()
