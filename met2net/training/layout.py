"""A run directory's checkpoint files — their names and how to tell an intact checkpoint — torch-free, so that
``met2net status`` and ``met2net consolidate`` read them without importing torch. The protocol that writes them is
``training/checkpoint.py``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from met2net.data.atomic import sha256_file
from met2net.errors import UserError

MARKER = "COMPLETE"  # written last; holds the sha256 of META
META = "meta.json"  # step, loader state, config, statistics, versions, sha256 of every other file
LATEST, BEST = "latest", "best"  # pointers: a step directory's name


def stage_dir(run_dir: str | Path, schedule: str) -> Path:
    return Path(run_dir) / "checkpoints" / schedule


def step_of(path: Path) -> int:
    return int(path.name[len("step_") :])


def step_dirs(stage: str | Path) -> list[Path]:
    """Every ``step_<n>`` directory of a stage, oldest first (complete or not)."""
    return sorted((p for p in Path(stage).glob("step_*") if p.is_dir() and p.name[5:].isdigit()), key=step_of)


def complete_step_dirs(stage: str | Path) -> list[Path]:
    """The step directories that carry the ``COMPLETE`` marker, oldest first (not verified: see ``checkpoint``)."""
    return [p for p in step_dirs(stage) if (p / MARKER).exists()]


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names it and says what to do."""


def verify(ckpt: Path) -> list[str]:
    """What is wrong with checkpoint ``ckpt`` (empty: intact): no ``COMPLETE``, a ``meta.json`` that is not the
    one ``COMPLETE`` vouches for, a file missing or not the one ``meta.json`` vouches for."""
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
        elif sha256_file(path) != digest:
            problems.append(f"{name} was altered or truncated (sha256 differs from {META})")
    return problems


def resolve(path: str | Path, schedule: str | None, check_files: bool = True) -> Path:
    """A checkpoint directory, a stage directory (its ``latest``), or a run directory whose ``latest``
    checkpoint of ``schedule`` is meant; errors say what is missing. ``check_files`` False: the caller verifies
    the checksums itself (consolidation hashes while it reads)."""
    p = Path(path)
    if not p.exists():
        missing = f" ({p / 'checkpoints' / schedule / LATEST} is missing)" if schedule else ""
        raise FileNotFoundError(f"{p}: no such checkpoint or run directory{missing}; check the path")
    if p.is_file():
        raise FileNotFoundError(
            f"{p}: is a file; expected a met2net checkpoint directory (step_<n>), a stage "
            f"directory (checkpoints/<schedule>), a run directory or consolidated weights (the directory "
            f"`met2net consolidate` writes, or its model.safetensors). For the authors' .ckpt/.pth weights run "
            f"`met2net import-reference {p} -o OUT` and use OUT"
        )
    if (p / LATEST).is_file():  # a stage directory, e.g. <run>/checkpoints/stage2
        p = p / (p / LATEST).read_text().strip()
    elif not (p / META).exists() and not (p / MARKER).exists():
        where = f"with a {schedule} checkpoint" if schedule else "nor a stage directory (no latest)"
        latest_ = p / "checkpoints" / str(schedule) / LATEST
        if schedule is None or not latest_.exists():
            stages = sorted(d.name for d in (p / "checkpoints").glob("*") if (d / LATEST).is_file())
            raise FileNotFoundError(
                f"{p}: neither a checkpoint (no {META}) nor a run directory {where}"
                + (f" ({latest_} is missing)" if schedule else "")
                + (
                    f"; it is a run directory with checkpoints of {', '.join(stages)}: name one, e.g. "
                    f"{p / 'checkpoints' / stages[-1]}"
                    if stages
                    else ""
                )
            )
        p = latest_.parent / latest_.read_text().strip()
    if not (p / MARKER).exists():
        raise FileNotFoundError(
            f"{p}: checkpoint is incomplete (no {MARKER} marker): the run that "
            f"wrote it stopped mid-write; use an earlier step"
        )
    problems = verify(p) if check_files else []
    if problems:
        raise CheckpointError(f"{p}: damaged checkpoint: {'; '.join(problems)}; use an earlier step")
    return p


def load_meta(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / META
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged, use an earlier step") from e
