"""Which training checkpoint a path names, and whether its files are the ones its ``meta.json`` vouches for: the
torch-free protocol of ``met2net/training/layout.py``, with consolidation's error type."""

from __future__ import annotations

from pathlib import Path

from met2net.consolidate.format import ConsolidateError
from met2net.training.layout import load_meta, resolve, verify

__all__ = ["damaged", "load_meta", "locate", "verify"]


def locate(path: str | Path, schedule: str | None) -> Path:
    """A checkpoint directory, a stage directory (its ``latest``), or a run directory's ``latest`` checkpoint of
    ``schedule``, with its ``COMPLETE`` marker; its files are verified while consolidation reads them."""
    return resolve(path, schedule, check_files=False)


def damaged(ckpt: Path, problems: list[str]) -> ConsolidateError:
    return ConsolidateError(f"{ckpt}: damaged checkpoint: {'; '.join(problems)}; use an earlier step")
