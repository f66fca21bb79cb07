"""Names of a run directory's checkpoint files — torch-free, so that ``met2net status`` on a login node reads them
without importing torch. The protocol that writes and checks them is ``training/checkpoint.py``."""

from __future__ import annotations

from pathlib import Path

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
