"""Which training checkpoint a path names, and whether its files are the ones its ``meta.json`` vouches for.

The protocol is ``met2net/training/checkpoint.py``'s (``resolve``, ``verify``, ``load_meta``), restated here without
torch: that module imports torch and the whole training side, which would cost consolidation two seconds of start-up
and teardown for reading a few JSON files and hashes. ``tests/unit/test_consolidate.py`` checks that both give the
same answers on intact and damaged checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from met2net.consolidate.format import ConsolidateError, sha256
from met2net.training.layout import LATEST, MARKER, META


def locate(path: str | Path, schedule: str | None) -> Path:
    """A checkpoint directory, a stage directory (its ``latest``), or a run directory's ``latest`` checkpoint of
    ``schedule``, with its ``COMPLETE`` marker (files not yet verified: ``verify``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint or run directory")
    if p.is_file():
        raise FileNotFoundError(
            f"{p}: is a file; expected a met2net checkpoint directory (step_<n>), a stage directory "
            f"(checkpoints/<schedule>) or a run directory. For the authors' .ckpt/.pth weights run "
            f"`met2net import-reference {p} -o OUT`"
        )
    if (p / LATEST).is_file():
        p = p / (p / LATEST).read_text().strip()
    elif not (p / META).exists() and not (p / MARKER).exists():
        latest = p / "checkpoints" / str(schedule) / LATEST
        if schedule is None or not latest.exists():
            where = f"with a {schedule} checkpoint ({latest} is missing)" if schedule else "nor a stage directory"
            raise FileNotFoundError(f"{p}: neither a checkpoint (no {META}) nor a run directory {where}")
        p = latest.parent / latest.read_text().strip()
    if not (p / MARKER).exists():
        raise FileNotFoundError(
            f"{p}: checkpoint is incomplete (no {MARKER} marker): the run that wrote it stopped mid-write; use an "
            "earlier step"
        )
    return p


def verify(ckpt: Path) -> list[str]:
    """What is wrong with checkpoint ``ckpt`` (empty: intact), as ``met2net.training.checkpoint.verify`` says it."""
    ckpt = Path(ckpt)
    if not (ckpt / MARKER).is_file():
        return [f"no {MARKER} marker: the run that wrote it stopped mid-write"]
    try:
        text = (ckpt / META).read_text()
        meta = json.loads(text)
    except (OSError, ValueError) as e:
        return [f"{META} is unreadable ({e})"]
    expected = (ckpt / MARKER).read_text().strip()
    if expected and expected != hashlib.sha256(text.encode()).hexdigest():
        return [f"{META} was altered or truncated (its sha256 is not the one {MARKER} holds)"]
    problems = []
    for name, digest in meta.get("files", {}).items():
        path = ckpt / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256(path) != digest:
            problems.append(f"{name} was altered or truncated (sha256 differs from {META})")
    return problems


def damaged(ckpt: Path, problems: list[str]) -> ConsolidateError:
    return ConsolidateError(f"{ckpt}: damaged checkpoint: {'; '.join(problems)}; use an earlier step")


def load_meta(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / META
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConsolidateError(f"{path}: not valid JSON ({e}); the checkpoint is damaged, use an earlier step") from e
