"""The one way the scaling commands read a CSV they are given: every row as a dict, the required columns checked
up front so a wrong file is named with what it lacks."""

from __future__ import annotations

import csv
from pathlib import Path

from met2net.errors import UserError


def read_rows(path: str | Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise UserError(
            f"{path}: needs a header and rows with {', '.join(columns)}" + (f"; missing {missing}" if missing else "")
        )
    return rows
