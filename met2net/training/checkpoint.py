"""Weights checkpoints: one directory per step, ``COMPLETE`` written last, then ``latest``.

Layout: ``<run>/checkpoints/<schedule>/step_<n>/{model.pt, meta.json, COMPLETE}`` and
``<run>/checkpoints/<schedule>/latest`` naming the newest complete one. A directory without
``COMPLETE`` is never loaded, so a run killed mid-write loses nothing that was complete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

import met2net

MARKER = "COMPLETE"


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def partial_dir(stage_dir: Path, step: int) -> Path:
    """Where a checkpoint is written before it is complete; readers never look here."""
    return stage_dir / f".step_{step}.partial"


def publish(stage_dir: Path, step: int, meta: dict[str, Any]) -> Path:
    """Finish the partial checkpoint of ``step``: meta.json, then ``COMPLETE``, rename it into place, then
    point ``latest`` at it. One process (rank 0) calls this, after every rank has written its files."""
    tmp, final = partial_dir(stage_dir, step), stage_dir / f"step_{step}"
    meta = {"format": 1, "step": step, "met2net": met2net.__version__, "torch": torch.__version__,
            "git": git_revision(), **meta}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    (tmp / MARKER).write_text("")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(stage_dir / "latest", final.name)
    return final


def prune(stage_dir: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last``, never the one ``latest`` names nor the
    best by validation loss (``meta.json`` → ``val.loss``), which is also pointed at by ``best``."""
    done = sorted((p for p in stage_dir.glob("step_*") if (p / MARKER).exists()), key=lambda p: int(p.name[5:]))
    scored = [(load_meta(p).get("val", {}).get("loss"), p) for p in done]
    scored = [(v, p) for v, p in scored if v is not None]
    keep = set(done[-keep_last:]) if keep_last else set(done)
    if scored:
        best = min(scored, key=lambda vp: (vp[0], -int(vp[1].name[5:])))[1]
        keep.add(best)
        _write_atomic(stage_dir / "best", best.name)
    pointer = stage_dir / "latest"
    if pointer.is_file():
        keep.add(stage_dir / pointer.read_text().strip())
    removed = [p for p in done if p not in keep]
    for p in removed:
        (p / MARKER).unlink()  # first: a half-deleted directory is never mistaken for a checkpoint
        shutil.rmtree(p)
    return removed


def latest(stage_dir: Path) -> Path | None:
    """The newest COMPLETE checkpoint of a stage directory, or None (nothing to resume)."""
    pointer = stage_dir / "latest"
    if not pointer.is_file():
        return None
    ckpt = stage_dir / pointer.read_text().strip()
    return ckpt if (ckpt / MARKER).exists() else None


def resolve(path: str | Path, schedule: str | None) -> Path:
    """A checkpoint directory, or a run directory whose ``latest`` checkpoint of
    ``schedule`` is meant; errors say what is missing."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint or run directory")
    if (p / "latest").is_file():  # a stage directory, e.g. <run>/checkpoints/stage2
        p = p / (p / "latest").read_text().strip()
    elif not (p / "meta.json").exists() and not (p / MARKER).exists():
        latest = p / "checkpoints" / str(schedule) / "latest"
        if not latest.exists():
            raise FileNotFoundError(f"{p}: neither a checkpoint (no meta.json) nor a run directory "
                                    f"with a {schedule} checkpoint ({latest} is missing)")
        p = latest.parent / latest.read_text().strip()
    if not (p / MARKER).exists():
        raise FileNotFoundError(f"{p}: checkpoint is incomplete (no {MARKER} marker): the run that "
                                f"wrote it stopped mid-write; use an earlier step")
    return p


def load_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "meta.json").read_text())


def init_from(model: torch.nn.Module, path: str | Path, schedule: str | None,
              model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Weights only (fresh optimizer) from a COMPLETE checkpoint (of ``schedule``, if given)
    of the same model configuration — how stage two starts from stage one."""
    ckpt = resolve(path, schedule)
    meta = load_meta(ckpt)
    if schedule is not None and meta.get("schedule") != schedule:
        raise ValueError(f"{ckpt}: is a {meta.get('schedule')!r} checkpoint; expected {schedule!r}")
    theirs = meta.get("model", {})
    diff = sorted(k for k in set(theirs) | set(model_cfg) if theirs.get(k) != model_cfg.get(k))
    if diff:
        details = ", ".join(f"model.{k}: checkpoint {theirs.get(k)!r} vs config {model_cfg.get(k)!r}"
                            for k in diff)
        raise ValueError(f"{ckpt}: was trained with another model configuration ({details})")
    model.load_state_dict(torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True))
    return meta
