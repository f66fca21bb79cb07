"""Checkpoints on disk: the whole protocol, from a partial directory to ``latest``, and the manager that runs it.

Layout: ``<run>/checkpoints/<schedule>/step_<n>/`` holds the engine's files (DeepSpeed's, or ``engine.pt``), every
rank's ``rng_rank<r>.pt`` and ``batchnorm_rank<r>.pt``, the gathered weights ``model.pt``, ``meta.json`` (step,
loader state, config, statistics, versions, and the sha256 of every other file) and ``COMPLETE`` (the sha256 of
``meta.json``), written last. ``latest`` and ``best`` name step directories.

Why a resume can trust what it loads:
- a checkpoint is written into ``.step_<n>.partial``, every file fsynced, then renamed into place: a directory
  named ``step_<n>`` with ``COMPLETE`` was complete when it got its name;
- ``COMPLETE`` guards ``meta.json`` and ``meta.json`` guards every other file, so a truncated or altered file is
  found before anything is loaded;
- the resume takes the newest intact step directory, whatever ``latest`` says: a damaged, missing or stale
  pointer never makes a run start again from step 0 while a complete checkpoint exists, and a damaged checkpoint
  is skipped, saying so, for the newest intact one before it;
- nothing complete is deleted before its replacement is in place, and pruning renames a directory away before
  deleting it, so a kill at any moment leaves only hidden leftovers, removed by the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import met2net
from met2net.compat import load_data, numpy_globals
from met2net.compat.deepspeed_internals import gathered
from met2net.data.atomic import atomic_write, fsync, sha256_file
from met2net.distributed.collectives import barrier, on_rank0
from met2net.training import universal
from met2net.training.buffers import average_batchnorm_statistics, batchnorm_statistics, set_batchnorm_statistics
from met2net.training.engine import Engine
from met2net.training.layout import (
    MARKER,
    META,
    CheckpointError,
    complete_step_dirs,
    load_meta,
    resolve,
    step_dirs,
    step_of,
    verify,
)
from met2net.training.storage import storage_error

FORMAT = 2  # 2: checksums in meta.json and COMPLETE; 1: none (still loaded)


# -- files --------------------------------------------------------------------------------------------------------
def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write_durable(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically (a temporary file renamed over it), on disk before this returns."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def partial_dir(stage_dir: Path, step: int) -> Path:
    """Where a checkpoint is written before it is complete; readers never look here."""
    return stage_dir / f".step_{step}.partial"


# -- publish, verify, prune ---------------------------------------------------------------------------------------
def publish(stage_dir: Path, step: int, meta: dict[str, Any]) -> Path:
    """Finish the partial checkpoint of ``step``: checksums into meta.json, then ``COMPLETE``, rename it into
    place, then point ``latest`` at it. One process (rank 0) calls this, after every rank has written (and
    fsynced) its files. A step directory that already exists is moved aside, not deleted, until the new one
    has its name."""
    tmp, final = partial_dir(stage_dir, step), stage_dir / f"step_{step}"
    files = {str(p.relative_to(tmp)): sha256_file(p) for p in _files(tmp) if p.name not in (META, MARKER)}
    meta = {
        "format": FORMAT,
        "step": step,
        "met2net": met2net.__version__,
        "torch": torch.__version__,
        "git": git_revision(),
        **meta,
        "files": files,
    }
    text = json.dumps(meta, indent=2)
    _write_durable(tmp / META, text)
    _write_durable(tmp / MARKER, hashlib.sha256(text.encode()).hexdigest())
    old = stage_dir / f".step_{step}.replaced"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync(stage_dir)
    _write_durable(stage_dir / "latest", final.name)
    shutil.rmtree(old, ignore_errors=True)
    return final


def newest_intact(stage_dir: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest step directory of ``stage_dir`` that passes ``verify``, or None when the stage has none at all.
    Damaged or incomplete ones are skipped (``warn`` says which and why); if step directories exist and none is
    intact, that is an error, never a silent start from step 0."""
    dirs = step_dirs(stage_dir)
    skipped = []
    for ckpt in reversed(dirs):
        problems = verify(ckpt)
        if not problems:
            if skipped and warn:
                warn(f"{stage_dir}: resuming from {ckpt.name}, skipping " + "; ".join(skipped))
            return ckpt
        skipped.append(f"{ckpt.name} ({', '.join(problems)})")  # named step_<n> only once complete: damaged
    if skipped:
        raise CheckpointError(
            f"{stage_dir}: no intact checkpoint to resume from: " + "; ".join(skipped) + ". Move "
            "the damaged directories away to start this stage again from step 0, or start a new "
            "run from an intact checkpoint's weights (training.init_from=..., another run.dir)"
        )
    return None


def prune(stage_dir: Path, keep_last: int, best_by: str = "forecast_mse") -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last``, never the one ``latest`` names nor the
    best — the lowest ``meta.json`` → ``val[best_by]`` (``training.best_by``), also pointed at by ``best``.
    Checkpoints written before their validation recorded ``best_by`` are scored by ``val.loss`` when none has it
    (two measures are never compared). A directory is renamed away (hidden) before it is deleted, so a kill
    mid-delete never leaves a half checkpoint behind."""
    done = complete_step_dirs(stage_dir)
    vals = [(load_meta(p).get("val", {}), p) for p in done]
    key = best_by if any(best_by in v for v, _ in vals) else "loss"
    scored = [(v[key], p) for v, p in vals if v.get(key) is not None]
    keep = set(done[-keep_last:]) if keep_last else set(done)
    if scored:
        best = min(scored, key=lambda vp: (vp[0], -step_of(vp[1])))[1]
        keep.add(best)
        _write_durable(stage_dir / "best", best.name)
    pointer = stage_dir / "latest"
    if pointer.is_file():
        keep.add(stage_dir / pointer.read_text().strip())
    removed = [p for p in done if p not in keep]
    for p in removed:
        doomed = p.with_name(f".{p.name}.deleting")
        os.replace(p, doomed)
        shutil.rmtree(doomed)
    return removed


def remove_leftovers(stage_dir: Path) -> list[Path]:
    """Hidden directories that an earlier run killed mid-save, mid-publish or mid-prune left behind."""
    leftovers = [p for p in Path(stage_dir).glob(".step_*") if p.is_dir()]
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    return leftovers


def unreadable_files(ckpt: Path) -> list[str]:
    """The ``.pt`` files of ``ckpt`` whose zip archive (what ``torch.save`` writes) is cut short or corrupt, by
    name: a load error alone ("failed finding central directory") does not say which file. Reads every file."""
    bad = []
    for path in sorted(Path(ckpt).glob("*.pt")):
        try:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is None:
                    continue
        except (OSError, zipfile.BadZipFile, EOFError):
            pass
        bad.append(path.name)
    return bad


def untrusted(ckpt: Path, error: BaseException) -> CheckpointError:
    """The error for a file of ``ckpt`` that would run code when unpickled (``load_data`` refused it)."""
    return CheckpointError(
        f"{ckpt}: {'; '.join(unsafe_files(ckpt)) or error}. met2net loads a checkpoint as data and never runs code "
        "from it, so this file was not written by met2net (altered, or from a source you should not trust). "
        "Use an earlier step (move this one away) or another checkpoint"
    )


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """``ckpt``'s gathered weights (``model.pt``), as data only."""
    try:
        return torch.load(Path(ckpt) / "model.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise untrusted(ckpt, e) from None


def unsafe_files(ckpt: Path) -> list[str]:
    """The files of ``ckpt`` that met2net loads as data (``model.pt``, ``engine.pt``, ``rng_rank*``,
    ``batchnorm_rank*``) naming Python objects that are not data, each as "<file> names <objects>"."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in numpy_globals()}
    found = []
    for path in sorted(Path(ckpt).glob("*.pt")):
        if path.name.startswith(("model", "engine", "rng_rank", "batchnorm_rank")):
            try:
                names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed
            except (RuntimeError, OSError, ValueError):  # not a zip archive: unreadable_files names it
                continue
            if names:
                found.append(f"{path.name} names {', '.join(sorted(names))}")
    return found


# -- loading weights ----------------------------------------------------------------------------------------------
def model_differences(meta: dict[str, Any], model_cfg: dict[str, Any]) -> str:
    """The ``model`` settings in which a checkpoint's ``meta`` and a config differ, as one phrase ('' if none)."""
    theirs = meta.get("model", {})
    diff = sorted(k for k in set(theirs) | set(model_cfg) if theirs.get(k) != model_cfg.get(k))
    return ", ".join(f"model.{k}: checkpoint {theirs.get(k)!r} vs config {model_cfg.get(k)!r}" for k in diff)


def check_resumable(ckpt: Path, model_cfg: dict[str, Any]) -> None:
    """Refuse to resume ``ckpt`` with another model configuration (its state would not fit), before anything loads."""
    if details := model_differences(load_meta(ckpt), model_cfg):
        raise CheckpointError(
            f"{ckpt}: this run directory's checkpoint was trained with another model configuration ({details}). "
            "Resume with the model settings it was trained with, or start a new run in another run.dir"
        )


def init_from(
    model: torch.nn.Module, path: str | Path, schedule: str | None, model_cfg: dict[str, Any]
) -> dict[str, Any]:
    """Weights only (fresh optimizer) from a COMPLETE checkpoint (of ``schedule``, if given)
    of the same model configuration — how stage two starts from stage one. ``path`` may also be consolidated
    weights (``met2net consolidate``, ``met2net import-reference``: safetensors + JSON, nothing unpickled), of any
    schedule since they are named explicitly; an inference file's momentum copies start equal to the trained
    copies, as in a new model."""
    from met2net.consolidate.load import fit_to_model, is_consolidated, load_consolidated

    if is_consolidated(path):
        state, meta = load_consolidated(path)
        ckpt = Path(path)
    else:
        ckpt = resolve(path, schedule)
        meta = load_meta(ckpt)
        if schedule is not None and meta.get("schedule") != schedule:
            raise CheckpointError(f"{ckpt}: is a {meta.get('schedule')!r} checkpoint; expected {schedule!r}")
        state = None
    if details := model_differences(meta, model_cfg):
        raise CheckpointError(
            f"{ckpt}: was trained with another model configuration ({details}); set the model settings to the "
            "checkpoint's, or give training.init_from a checkpoint of this model"
        )
    if state is not None:
        model.load_state_dict(fit_to_model(state, model.state_dict().keys()))
    else:
        model.load_state_dict(load_weights(ckpt))
    return meta


def init_from_source(
    model: torch.nn.Module, source: str | Path, explicit: bool, schedule: str, model_cfg: dict[str, Any]
) -> dict[str, Any]:
    """``init_from`` at a stage's start: ``source`` is ``training.init_from`` (``explicit``) or, for stage two by
    default, this run's directory (its stage-one checkpoint); an error says which of the two named it."""
    try:
        return init_from(model, source, "stage1" if schedule == "stage2" else None, model_cfg)
    except (FileNotFoundError, CheckpointError) as e:
        where = "training.init_from" if explicit else "stage two starts from this run's stage one"
        advice = "" if explicit else "; train stage1 in this run.dir first, or set training.init_from"
        raise CheckpointError(f"{where}: {e}{advice}") from None


# -- the manager --------------------------------------------------------------------------------------------------
class CheckpointManager:
    """Save and resume one stage's checkpoints on every rank of a run; the Trainer calls it with its progress
    (``Trainer.state_dict()``) and knows nothing of files."""

    def __init__(
        self, stage_dir: Path, rank: int = 0, world_size: int = 1, keep_last: int = 2, best_by: str = "forecast_mse"
    ):
        self.stage_dir, self.rank, self.world_size, self.keep_last = Path(stage_dir), rank, world_size, keep_last
        self.best_by = best_by  # the validation key that names the best checkpoint (training.best_by)
        self._log: Callable[[dict[str, Any]], None] | None = None
        self._pending: list[dict[str, Any]] = []  # records from before the run's log existed

    def attach_log(self, log: Callable[[dict[str, Any]], None]) -> None:
        """Where the manager's records go (the run's metrics.jsonl); earlier ones are written now."""
        self._log = log
        for record in self._pending:
            log(record)
        self._pending.clear()

    def find_resumable(self) -> Path | None:
        """The checkpoint a resume starts from (rank 0 looks and verifies; every rank gets its answer)."""
        return on_rank0(newest_intact, self.rank, self.world_size, self.stage_dir, self._warn)

    def save(
        self, step: int, engine: Engine, model: torch.nn.Module, progress: dict[str, Any], meta: dict[str, Any]
    ) -> Path:
        """``_save``, with a write that fails because of where it goes (a full, read-only or forbidden file system:
        torch reports a full disk as "unexpected pos" without a cause) raised as a ``StorageError`` naming the
        directory, the cause and what to do. The partial checkpoint is removed; the complete ones are untouched."""
        try:
            return self._save(step, engine, model, progress, meta)
        except (OSError, RuntimeError) as e:
            done = complete_step_dirs(self.stage_dir) if self.stage_dir.is_dir() else []
            after = (
                f"The newest complete checkpoint, {done[-1]}, is untouched: run again to resume from it."
                if done
                else "No earlier checkpoint of this stage exists."
            )
            error = storage_error(self.stage_dir, f"the checkpoint of step {step}", e, after)
            if error is None:
                raise
            if self.rank == 0:
                shutil.rmtree(partial_dir(self.stage_dir, step), ignore_errors=True)  # frees the space it took
            raise error from e

    def _save(
        self, step: int, engine: Engine, model: torch.nn.Module, progress: dict[str, Any], meta: dict[str, Any]
    ) -> Path:
        """Every rank writes its engine state, RNG state (``progress["rng"]``) and own BatchNorm statistics into a
        partial directory; rank 0 adds the whole weights (``model.pt``, gathered under ZeRO-3, with the statistics
        averaged over the ranks) and publishes it. Saving leaves the live statistics as they were, so where the
        checkpoints fall does not change the run, and a resume continues it bitwise."""
        tmp = partial_dir(self.stage_dir, step)
        if self.rank == 0:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.stage_dir)
            tmp.mkdir()
        barrier(self.world_size)
        client = {k: v for k, v in progress.items() if k != "rng"}
        engine.save_checkpoint(self.stage_dir, tag=tmp.name, client_state=client, save_latest=False)
        torch.save(progress["rng"], tmp / f"rng_rank{self.rank}.pt")
        live = [b.clone() for b in batchnorm_statistics(model)]
        torch.save(live, tmp / f"batchnorm_rank{self.rank}.pt")
        if self.world_size > 1:
            average_batchnorm_statistics(model)  # model.pt (rank 0's) holds every rank's statistics
        with gathered(list(model.parameters())):  # ZeRO-3: every rank takes part in the gather
            if self.rank == 0:
                torch.save(model.state_dict(), tmp / "model.pt")
        set_batchnorm_statistics(model, live)
        barrier(self.world_size)
        for path in _files(tmp):  # each rank: what its node wrote is on disk before COMPLETE names it
            fsync(path)
        barrier(self.world_size)
        if self.rank == 0:
            publish(self.stage_dir, step, {**meta, **client})
            prune(self.stage_dir, self.keep_last, self.best_by)
        barrier(self.world_size)
        return self.stage_dir / f"step_{step}"

    def load(self, ckpt: Path, engine: Engine, model: torch.nn.Module, mode: str) -> dict[str, Any]:
        """Restore the engine (weights, optimizer, LR schedule) and this rank's BatchNorm statistics from ``ckpt``;
        return the progress to hand to ``Trainer.load_state_dict`` (its ``rng`` is None when the checkpoint was
        written by another number of ranks). ``mode``: ``universal.resume_mode``'s answer, which the engine was
        built for. At another world size DeepSpeed's universal checkpoint carries weights, optimizer and LR
        schedule, and ``model.pt`` the frozen copies and BatchNorm statistics."""
        saved_world = int(load_meta(ckpt).get("world_size", 1))
        try:
            if mode == "universal":
                if not engine.load_universal_checkpoint():
                    raise RuntimeError(
                        f"written by {saved_world} rank(s), this run has {self.world_size}: build "
                        "the DeepSpeed engine with load_universal=True (build_trainer does)"
                    )
                on_rank0(universal.convert, self.rank, self.world_size, ckpt)
                _, client = engine.load_checkpoint(ckpt, tag=universal.UNIVERSAL)
                universal.restore_untrained(model, load_weights(ckpt))
            else:
                _, client = engine.load_checkpoint(ckpt.parent, tag=ckpt.name)
            rng = None
            if saved_world == self.world_size:
                rng = load_data(ckpt / f"rng_rank{self.rank}.pt")  # Python and NumPy RNG states: tuples, an array
                own = ckpt / f"batchnorm_rank{self.rank}.pt"
                if own.exists():  # older checkpoints: the engine's (rank 0's) statistics
                    set_batchnorm_statistics(model, torch.load(own, weights_only=True))
        except pickle.UnpicklingError as e:  # a file that would run code when unpickled: never loaded
            raise untrusted(ckpt, e) from None
        except (OSError, RuntimeError, KeyError, EOFError) as e:
            bad = unreadable_files(ckpt)
            raise CheckpointError(
                f"{ckpt}: rank {self.rank} could not load it"
                + (f": {', '.join(bad)} truncated or not a torch file" if bad else "")
                + f" ({e}). Resume from an earlier step (move this one away) or start a new run from its weights only"
            ) from e
        if client is None:
            raise CheckpointError(f"{ckpt}: the engine found no checkpoint state in it")
        return {**client, "rng": rng, "saved_world_size": saved_world}

    def _warn(self, message: str) -> None:
        print(f"met2net: warning: {message}", file=sys.stderr)
        record = {"split": "checkpoint_warning", "message": message}
        self._log(record) if self._log else self._pending.append(record)
