"""Reading a met2net checkpoint's weights for consolidation: DeepSpeed ZeRO 0–3 at any world size, or the
plain-PyTorch engine's ``engine.pt``, one file at a time.

Where each tensor comes from:

- trained parameters: the fp32 master weights of DeepSpeed's optimizer files (ZeRO 1–3; what DeepSpeed's own
  ``zero_to_fp32`` returns), the module state (ZeRO-0) or ``engine.pt`` (plain PyTorch);
- frozen parameters (the momentum copies; stage two's encoders and decoders): ZeRO-3's per-rank fragments, ZeRO-2's
  whole fragments, the module state at ZeRO 0–1 (where DeepSpeed's converter leaves them out), ``engine.pt``;
  converted to fp32 whatever dtype training stored them in;
- buffers (BatchNorm running statistics): the checkpoint's ``model.pt``, where they are averaged over the ranks —
  the statistics validation used (DeepSpeed's files hold each rank's own).

The DeepSpeed file layout itself (names, keys, partitioning) is read through ``met2net.compat.zero_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from met2net.compat import torch_files
from met2net.compat import zero_checkpoint as ds
from met2net.consolidate.format import ConsolidateError, is_buffer
from met2net.consolidate.source import damaged, load_meta, locate, verify

LOCAL_STATE = "engine.pt"  # the plain-PyTorch engine's file (met2net.training.engine.LOCAL_STATE)
GATHERED = "model.pt"  # the whole state dict, BatchNorm statistics averaged over the ranks

Tensors = dict[str, tuple[tuple[int, ...], np.dtype]]


@dataclass
class Source:
    """A checkpoint with its ``COMPLETE`` marker, how it was written, and its checksums being verified (``check``)."""

    path: Path
    meta: dict[str, Any]
    engine: str  # "deepspeed" or "local"
    zero_stage: int
    world_size: int
    first: dict[str, Any] | None = None  # rank 0's model-states file, once loaded
    verified: Future | None = None  # source.verify's answer, computed on another thread
    gathered: dict[str, np.ndarray] | None = None  # model.pt, memory-mapped

    def check(self) -> None:
        """Wait for the checksums; a file that is not the one ``meta.json`` vouches for is an error naming it."""
        problems = self.verified.result() if self.verified is not None else verify(self.path)
        if problems:
            raise damaged(self.path, problems)

    @property
    def files(self) -> list[str]:
        """The engine files that hold its weights, in the order they are read."""
        if self.engine == "local":
            return [LOCAL_STATE]
        return ds.expected_files(self.zero_stage, self.world_size)


def open_checkpoint(path: str | Path, schedule: str | None = None) -> Source:
    """The checkpoint at ``path`` (a step directory, or a stage directory's ``latest``; a run directory with
    ``schedule``): ``COMPLETE`` present, exactly the engine files its engine, ZeRO stage and world size write — none
    missing, none extra. The checksums (``meta.json``'s, every file's) are computed meanwhile on another thread
    (hashing releases the GIL: on a second core it costs no wall time); ``Source.check`` waits for them, and nothing
    read from the files may be published before it has returned."""
    ckpt = locate(path, schedule)  # FileNotFoundError naming what is missing
    checking = ThreadPoolExecutor(1, thread_name_prefix="met2net-verify")
    verified = checking.submit(verify, ckpt)
    checking.shutdown(wait=False)
    try:
        meta = load_meta(ckpt)
    except ValueError:
        Source(ckpt, {}, "", 0, 0, verified=verified).check()
        raise
    engine = meta.get("engine") or ("local" if (ckpt / LOCAL_STATE).exists() else "deepspeed")
    stage = int(meta.get("zero_stage", meta.get("config", {}).get("deepspeed", {}).get("zero_stage", 0)))
    source = Source(
        ckpt, meta, engine, stage if engine == "deepspeed" else 0, int(meta.get("world_size", 1)), verified=verified
    )
    present = {p.name for p in ckpt.iterdir() if ds.is_engine_file(p.name) or p.name == LOCAL_STATE}
    missing = [f for f in [*source.files, GATHERED] if not (ckpt / f).is_file()]
    extra = sorted(present - set(source.files))
    what = f"{engine} ZeRO-{source.zero_stage} on {source.world_size} rank(s) (meta.json)"
    if missing:
        source.check()
        raise ConsolidateError(f"{ckpt}: written by {what}, but {', '.join(missing)} is missing")
    if extra:
        raise ConsolidateError(
            f"{ckpt}: written by {what}, but it also holds {', '.join(extra)}, which such a run does not write: "
            "rank files of another run or world size were copied in; remove them or use another checkpoint"
        )
    return source


def layout(source: Source) -> Tensors:
    """Name → (shape, dtype) of every tensor of the checkpoint's model, in ``state_dict`` order: its gathered
    ``model.pt`` as the trainer wrote it (read for its shapes only: nothing is loaded)."""
    return {name: (tuple(v.shape), v.dtype) for name, v in _gathered(source).items()}


def pieces(source: Source, tensors: Tensors) -> Iterator[ds.Piece]:
    """Every element of ``tensors`` (the parameters, then the buffers) as pieces ``(name, first element, values)``,
    reading one file at a time. Names and shapes in the engine's files are checked against ``tensors`` as they are
    found."""
    params = {n: s for n, (s, _) in tensors.items() if not is_buffer(n)}
    try:
        if source.engine == "local":
            yield from _whole_module(source.path / LOCAL_STATE, _load_local(source.path / LOCAL_STATE), params)
        elif source.zero_stage == 0:
            states = _model_states(source, 0)
            states.pop("optimizer", None)  # ZeRO-0 keeps the whole optimizer state here: its moments are not read
            yield from _whole_module(source.path / ds.MODEL_STATES, ds.module_state(states), params)
        elif source.zero_stage < 3:
            yield from _zero12(source, params)
        else:
            yield from _zero3(source, params)
        gathered = _gathered(source)
        for name in (n for n in tensors if is_buffer(n)):
            yield name, 0, gathered[name]
    except (ValueError, KeyError) as e:  # the compat layer's findings about DeepSpeed's files, a key not found
        if isinstance(e, ConsolidateError):
            raise
        raise ConsolidateError(str(e) if isinstance(e, ValueError) else f"{source.path}: no entry {e}") from None
    finally:
        source.gathered = None


def _gathered(source: Source) -> dict[str, np.ndarray]:
    if source.gathered is None:
        source.gathered = ds.load(source.path / GATHERED)
    return source.gathered


def deepspeed_version(source: Source) -> str | None:
    """The DeepSpeed version that wrote the checkpoint (its first model-states file, kept for ``pieces``)."""
    if source.engine == "local":
        return None
    return ds.deepspeed_version(_model_states(source, 0, keep=True))


def _model_states(source: Source, rank: int, keep: bool = False) -> dict[str, Any]:
    """A model-states file (ZeRO 0–2: the one; ZeRO-3: rank ``rank``'s), memory-mapped; rank 0's is loaded once."""
    name = ds.MODEL_STATES if source.zero_stage < 3 else ds.ZERO3_MODEL_STATES.format(rank=rank)
    if rank == 0 and source.first is not None:
        states = source.first
    else:
        states = ds.load(source.path / name)
    source.first = states if keep else None
    return states


# -- each engine's files ---------------------------------------------------------------------------------------------
def _load_local(path: Path) -> dict[str, np.ndarray]:
    """``engine.pt``'s module state. The file also holds the optimizer (tensors, numbers, tuples) and the LR
    schedule; it is memory-mapped and the moments are dropped unread."""
    try:
        state = torch_files.load(path)
    except torch_files.FileFormatError as e:
        raise ConsolidateError(f"{e}; not a readable engine file") from None
    state.pop("optimizer", None)
    return state["module"]


def _check_shape(path: Path, name: str, shape: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(want):
        raise ConsolidateError(
            f"{path}: {name} has shape {tuple(shape)}, the checkpoint's model config needs {tuple(want)}: the file "
            "belongs to another model"
        )


def _missing(path: Path, names: list[str]) -> ConsolidateError:
    return ConsolidateError(
        f"{path}: lacks {len(names)} parameter(s) of the checkpoint's model, e.g. {names[:3]}: the file belongs to "
        "another model or run"
    )


def _whole_module(path: Path, module: dict[str, np.ndarray], params: dict[str, tuple[int, ...]]) -> Iterator:
    absent = [n for n in params if n not in module]
    if absent:
        raise _missing(path, absent)
    for name, shape in params.items():
        _check_shape(path, name, module[name].shape, shape)
        yield name, 0, module[name]


def _zero12(source: Source, params: dict[str, tuple[int, ...]]) -> Iterator[ds.Piece]:
    path = source.path / ds.MODEL_STATES
    states = _model_states(source, 0)
    groups = ds.trained_shapes(states)
    trained = {n: tuple(s) for g in groups for n, s in g.items()}
    module, whole = ds.module_state(states), ds.frozen_fragments(states)  # ZeRO-2: frozen ones whole; ZeRO-1: none
    absent = [n for n in params if n not in trained and n not in module]
    if absent:
        raise _missing(path, absent)
    for name, shape in params.items():
        _check_shape(path, name, trained[name] if name in trained else _frozen(whole, module, name).shape, shape)
    yield from ((n, 0, _frozen(whole, module, n)) for n in params if n not in trained)
    del states, module, whole  # no reference into a rank file outlives its turn: its mapped pages leave memory
    starts = [0] * len(groups)
    paddings = None
    for rank in range(source.world_size):
        part = _partition(source, rank)
        paddings = part.alignment_paddings
        yield from (piece for piece in ds.zero12_pieces(groups, part, rank, starts) if piece[0] in params)
        starts = [s + g.size for s, g in zip(starts, part.groups)]
        del part
    need = ds.zero12_total(groups, paddings, source.world_size)
    if [_aligned(s, source.world_size) for s in starts] != need:
        raise ConsolidateError(
            f"{source.path}: the optimizer files hold {starts} fp32 elements per group, the parameter shapes need "
            f"{need}: rank files of another run or world size"
        )


def _frozen(whole: dict[str, np.ndarray], module: dict[str, np.ndarray], name: str) -> np.ndarray:
    return whole[name] if name in whole else module[name]


def _aligned(n: int, world_size: int) -> int:
    return -(-n // (2 * world_size)) * 2 * world_size


def _zero3(source: Source, params: dict[str, tuple[int, ...]]) -> Iterator[ds.Piece]:
    groups: list[dict[str, tuple[int, ...]]] = []
    for rank in range(source.world_size):
        path = source.path / ds.ZERO3_MODEL_STATES.format(rank=rank)
        states = _model_states(source, rank)
        mine, frozen = ds.trained_shapes(states), ds.frozen_shapes(states)
        if rank == 0:
            groups, frozen0 = mine, frozen
            trained = {n: tuple(s) for g in groups for n, s in g.items()}
            absent = [n for n in params if n not in trained and n not in frozen]
            if absent:
                raise _missing(path, absent)
            for name, shape in params.items():
                _check_shape(path, name, trained[name] if name in trained else frozen[name], shape)
        elif [list(g) for g in mine] != [list(g) for g in groups] or list(frozen) != list(frozen0):
            raise ConsolidateError(f"{path}: lists other parameters than rank 0's file: a file of another run")
        wanted = {n: s for n, s in frozen.items() if n in params}
        yield from ds.zero3_frozen_pieces(wanted, ds.frozen_fragments(states), path, rank, source.world_size)
        del states
        part = _partition(source, rank)
        yield from (piece for piece in ds.zero3_pieces(groups, part, rank, source.world_size) if piece[0] in params)
        del part


def _partition(source: Source, rank: int) -> ds.OptimizerPartition:
    path = source.path / ds.OPTIM_STATES.format(rank=rank)
    part = ds.OptimizerPartition(path)
    if part.zero_stage != source.zero_stage or part.partition_count != source.world_size:
        raise ConsolidateError(
            f"{path}: written at ZeRO-{part.zero_stage} on {part.partition_count} rank(s), the checkpoint's meta.json "
            f"says ZeRO-{source.zero_stage} on {source.world_size}: a rank file of another run"
        )
    return part
