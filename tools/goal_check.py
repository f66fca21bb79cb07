"""Issue 12's goal 2, clause by clause, for the final model of every staged pipeline in studies' rows.csv files:
one table for the evidence that docs/results.md spreads over sections (budgets, seeds, rounds).

    .venv/bin/python tools/goal_check.py ROWS.csv [ROWS.csv ...] [--tolerance 0.05]

A file is one study of `tools/staged_study.py` (its rows.csv); each staged variant's last stage is judged against
the same file's implicit row and baselines, and implicit itself against the baselines:

- the largest ratio of the model's score to persistence's and to climatology's over variables and leads, in rmse_w
  (latitude-weighted) and rmse (plain spatial means): below 1 at every lead means the baseline is beaten there;
- the largest per-lead ratio of its rmse_w to implicit's (which variable and lead), and the largest ratio over leads;
- whether goal 2 holds: both baselines beaten at every lead in both metrics, and within ``--tolerance`` of implicit
  at every lead (the study report's own check, `staged_study.goal_check`, takes the mean over leads).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from staged_study import BASELINES, ratio_over_leads, read_rows  # tools/, beside this script

METRICS = ("rmse_w", "rmse")
FINAL = re.compile(r"^(?P<variant>.+), after stage (?P<stage>\d+) \(stage[12]\)$")


def finals(names: list[str]) -> list[str]:
    """Each staged variant's row after its last stage, in the order the variants first appear."""
    last: dict[str, tuple[int, str]] = {}
    for name in names:
        m = FINAL.match(name)
        if m and int(m["stage"]) >= last.get(m["variant"], (0, ""))[0]:
            last[m["variant"]] = (int(m["stage"]), name)
    return [name for _, name in last.values()]


def clauses(s: dict, implicit: dict | None, tolerance: float) -> dict:
    """Goal 2's clauses for the scores ``s`` of one row (``implicit``: the implicit row's, None for implicit)."""
    variables = sorted({k[2] for k in s if k[0] == "met2net"})
    leads = sorted({k[3] for k in s if k[0] == "met2net"})
    ratios = {
        (v, t, b, m): s[("met2net", m, v, t)] / s[(b, m, v, t)]
        for v in variables
        for t in leads
        for b in BASELINES
        for m in METRICS
    }
    out = {
        f"{b} {m}": max(r for (_, _, b_, m_), r in ratios.items() if (b_, m_) == (b, m))
        for b in BASELINES
        for m in METRICS
    }
    lost: dict[tuple[str, int, str], list[str]] = {}
    for (v, t, b, m), ratio in ratios.items():
        if ratio >= 1:
            lost.setdefault((v, t, b), []).append(m)
    out["lost"] = lost
    holds = not lost
    if implicit is not None:
        per_lead = {
            (v, t): s[("met2net", "rmse_w", v, t)] / implicit[("met2net", "rmse_w", v, t)]
            for v in variables
            for t in leads
        }
        out["implicit by lead"] = max(per_lead.items(), key=lambda kv: kv[1])
        out["implicit over leads"] = max(
            ratio_over_leads(
                {t: s[("met2net", "rmse_w", v, t)] for t in leads},
                {t: implicit[("met2net", "rmse_w", v, t)] for t in leads},
            )
            for v in variables
        )
        holds = holds and out["implicit by lead"][1] <= 1 + tolerance
    out["holds"] = holds
    return out


def table(paths: list[Path], tolerance: float) -> list[str]:
    """The markdown table: a line per (file, row)."""
    head = " | ".join(f"vs {b} {m}" for b in BASELINES for m in METRICS)
    lines = [
        f"| rows | model | {head} | not beaten | vs implicit, worst lead | vs implicit, over leads | goal 2 |",
        "|---|---|" + "---:|" * len(BASELINES) * len(METRICS) + "---|---:|---:|---|",
    ]
    for path in paths:
        rows, unit = read_rows(path)
        if "implicit" not in rows:
            raise SystemExit(f"{path}: no implicit row; goal 2 is judged against it")
        for name in ["implicit", *finals(list(rows))]:
            c = clauses(rows[name], None if name == "implicit" else rows["implicit"], tolerance)
            cells = [f"{c[f'{b} {m}']:.3f}" for b in BASELINES for m in METRICS]
            cells.append(", ".join(f"{v} {t} {unit} {b} ({', '.join(ms)})" for (v, t, b), ms in c["lost"].items()))
            if "implicit by lead" in c:
                (var, lead), ratio = c["implicit by lead"]
                cells += [f"{ratio:.3f} ({var} {lead} {unit})", f"{c['implicit over leads']:.3f}"]
            else:
                cells += ["", ""]
            lines.append(f"| {path.name} | {name} | " + " | ".join(cells) + f" | {'yes' if c['holds'] else 'no'} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", type=Path, help="studies' rows.csv files")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed per-lead excess over implicit (0.05)")
    args = p.parse_args()
    print("\n".join(table(args.rows, args.tolerance)))


if __name__ == "__main__":
    main()
