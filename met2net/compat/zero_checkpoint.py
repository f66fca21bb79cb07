"""DeepSpeed's checkpoint files (ZeRO 0–3) as met2net's consolidation reads them, without DeepSpeed (nor torch:
``met2net.compat.torch_files``).

What this relies on (DeepSpeed 0.19.8, the version range pinned in ``met2net.compat``), none of it documented API:

- File names in a checkpoint directory: ZeRO 0–2 write one ``mp_rank_00_model_states.pt`` (the module's state dict,
  ``buffer_names``, ``param_shapes``, ``frozen_param_shapes``/``frozen_param_fragments`` from ZeRO-2 on, client state,
  ``ds_version``); ZeRO-3 one ``zero_pp_rank_<r>_mp_rank_00_model_states.pt`` per rank (the same keys, with this
  rank's partitions of the frozen parameters); ZeRO 1–3 one ``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` per rank.
- The optimizer files' ``optimizer_state_dict``: ``zero_stage``, ``partition_count``, and the fp32 master weights —
  ZeRO-1/2: ``single_partition_of_fp32_groups`` (rank r holds elements [r·P, (r+1)·P) of each group's flat vector, in
  which the parameters of ``param_shapes[g]`` follow each other, each followed by its ``param_alignment_paddings``
  entry; ``param_slice_mappings`` says which parameters rank r holds); ZeRO-3: ``fp32_flat_groups`` (every parameter
  split into ⌈numel/W⌉-element partitions, rank r's partitions of all parameters one after the other across its
  groups). The Adam moments sit beside them (``base_optimizer_state`` / ``optimizer_state_dict.state``).
- The pickles name two DeepSpeed classes (``ZeroStageEnum``, ``LossScaler``) and one dataclass
  (``fragment_address``); ``load`` gives the unpickler stand-ins for exactly those and allows nothing but tensors
  besides, so the files load without running any code they could name and without importing DeepSpeed or torch
  (seconds of start-up).

The reconstruction is the one of DeepSpeed's ``deepspeed/utils/zero_to_fp32.py`` (same element order and padding
rules), turned into pieces ``(name, first element, flat values)`` so that a caller writes each piece where it belongs
and never holds more than one rank file.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from met2net.compat import torch_files
from met2net.errors import UserError

MODEL_STATES = "mp_rank_00_model_states.pt"  # ZeRO 0–2: one file
OPTIM_STATES = "zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"  # ZeRO 1–3: one per rank
ZERO3_MODEL_STATES = "zero_pp_rank_{rank}_mp_rank_00_model_states.pt"  # ZeRO-3: one per rank

Piece = tuple[str, int, np.ndarray]  # (parameter name, index of its first element, 1-D values)


class _ZeroStageEnum(enum.IntEnum):  # deepspeed.runtime.zero.config.ZeroStageEnum
    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3
    max_stage = 4


class _LossScaler:  # deepspeed.runtime.fp16.loss_scaler.LossScaler: its attributes are restored, nothing runs
    pass


class _FragmentAddress:  # deepspeed.utils.tensor_fragment.fragment_address, a dataclass (numel, start)
    numel: int
    start: int


_STAND_IN = {
    "deepspeed.runtime.zero.config.ZeroStageEnum": _ZeroStageEnum,
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": _LossScaler,
    "deepspeed.utils.tensor_fragment.fragment_address": _FragmentAddress,
}


def load(path: Path) -> dict[str, Any]:
    """One DeepSpeed checkpoint file (or ``model.pt``): tensors as read-only numpy views of the memory-mapped file
    (``met2net.compat.torch_files``), so dropping the optimizer moments right after loading costs nothing. The file
    is a pickle; nothing but tensors, their containers and the stand-ins above is ever looked up, so no code it
    names can run. A file that names anything else (a DeepSpeed version outside the tested range) is refused,
    naming it."""
    try:
        return torch_files.load(path, _STAND_IN)
    except torch_files.FileFormatError as e:
        raise UserError(
            f"{e}" + ("; written by a DeepSpeed version outside the tested range?" if "does not read" in str(e) else "")
        ) from None


def expected_files(zero_stage: int, world_size: int) -> list[str]:
    """The engine files DeepSpeed writes for ``zero_stage`` on ``world_size`` ranks."""
    if zero_stage == 0:
        return [MODEL_STATES]
    optim = [OPTIM_STATES.format(rank=r) for r in range(world_size)]
    if zero_stage < 3:
        return [MODEL_STATES, *optim]
    return [f for r in range(world_size) for f in (ZERO3_MODEL_STATES.format(rank=r), OPTIM_STATES.format(rank=r))]


def is_engine_file(name: str) -> bool:
    """A file name DeepSpeed uses for model or optimizer states (any rank)."""
    return name.endswith(("_model_states.pt", "_optim_states.pt"))


def module_state(model_states: dict[str, Any]) -> dict[str, np.ndarray]:
    """The module's state dict in a model-states file (ZeRO 0–2: whole tensors; ZeRO-3: empty parameters)."""
    return model_states["module"]


def trained_shapes(model_states: dict[str, Any]) -> list[dict[str, tuple[int, ...]]]:
    """Per optimizer group, the trained parameters' names and shapes in the order of their flat vector."""
    return model_states.get("param_shapes") or []


def frozen_shapes(model_states: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The frozen parameters' shapes, which DeepSpeed records from ZeRO-2 on (ZeRO-0/1: empty)."""
    return model_states.get("frozen_param_shapes") or {}


def frozen_fragments(model_states: dict[str, Any]) -> dict[str, np.ndarray]:
    """ZeRO-2: whole frozen parameters; ZeRO-3: this rank's flat partition of each (ZeRO-0/1: empty)."""
    return model_states.get("frozen_param_fragments") or {}


def deepspeed_version(model_states: dict[str, Any]) -> str:
    return str(model_states.get("ds_version", "unknown"))


class OptimizerPartition:
    """This rank's fp32 master weights from one optimizer file; the Adam moments are dropped as soon as it is read
    (they stay on disk: the file is memory-mapped)."""

    def __init__(self, path: Path):
        state = load(path)["optimizer_state_dict"]
        state.pop("optimizer_state_dict", None)  # ZeRO-3 moments
        state.pop("base_optimizer_state", None)  # ZeRO-1/2 moments
        self.path = path
        self.zero_stage = int(state["zero_stage"])
        count = state["partition_count"]
        self.partition_count = max(count) if isinstance(count, list) else int(count)
        key = "fp32_flat_groups" if self.zero_stage == 3 else "single_partition_of_fp32_groups"
        self.groups: list[np.ndarray] = list(state[key])
        self.alignment_paddings: list[list[int]] | None = state.get("param_alignment_paddings")
        self.slice_mappings: list[dict[str, Any]] | None = state.get("param_slice_mappings")


def zero12_pieces(
    shapes: list[dict[str, tuple[int, ...]]], part: OptimizerPartition, rank: int, starts: list[int]
) -> Iterator[Piece]:
    """The pieces of the trained parameters in rank ``rank``'s ZeRO-1/2 partition. ``starts[g]``: where this rank's
    partition of group ``g`` begins in the group's flat vector (the sum of the earlier ranks' partition sizes).
    Checks the partition against DeepSpeed's own per-rank map (``param_slice_mappings``) when the file has one, so
    a rank file in the wrong place is found."""
    if len(part.groups) != len(shapes):
        raise UserError(f"{part.path}: {len(part.groups)} parameter groups, the model-states file lists {len(shapes)}")
    for g, (group, flat) in enumerate(zip(shapes, part.groups)):
        lo, hi = starts[g], starts[g] + flat.size
        paddings = part.alignment_paddings[g] if part.alignment_paddings else [0] * len(group)
        offset, found = 0, {}
        for (name, shape), pad in zip(group.items(), paddings):
            numel = math.prod(shape)
            a, b = max(offset, lo), min(offset + numel, hi)
            if a < b:
                found[name] = (b - a, a - lo)
                yield name, a - offset, flat[a - lo : b - lo]
            offset += numel + pad
        if part.slice_mappings is not None:
            theirs = {n: (int(f.numel), int(f.start)) for n, f in part.slice_mappings[g].items()}
            if theirs != found:
                raise UserError(
                    f"{part.path}: holds another part of the flat weights than rank {rank}'s (DeepSpeed's own map "
                    "disagrees): a rank file from another checkpoint or rank"
                )


def zero12_total(
    shapes: list[dict[str, tuple[int, ...]]], paddings: list[list[int]] | None, world_size: int
) -> list[int]:
    """Elements each group's flat vector needs, aligned as DeepSpeed aligns it (to 2·W), to check the partitions."""
    totals = []
    for g, group in enumerate(shapes):
        pads = paddings[g] if paddings else [0] * len(group)
        n = sum(math.prod(s) for s in group.values()) + sum(pads)
        totals.append(2 * world_size * math.ceil(n / (2 * world_size)))
    return totals


def zero3_partition_numel(numel: int, world_size: int) -> int:
    return math.ceil(numel / world_size)


def zero3_pieces(
    shapes: list[dict[str, tuple[int, ...]]], part: OptimizerPartition, rank: int, world_size: int
) -> Iterator[Piece]:
    """The pieces of the trained parameters in rank ``rank``'s ZeRO-3 partitions: parameter p's partition is
    ⌈numel/W⌉ elements at its offset in the rank's groups (laid end to end) and holds elements [r·n, (r+1)·n) of it
    (the last rank's tail is padding)."""
    # the groups laid end to end (met2net trains one optimizer group; more would be concatenated, as DeepSpeed does)
    flat = part.groups[0] if len(part.groups) == 1 else np.concatenate(part.groups)
    offset = 0
    for group in shapes:
        for name, shape in group.items():
            numel = math.prod(shape)
            n = zero3_partition_numel(numel, world_size)
            first = rank * n
            take = max(0, min(n, numel - first))
            if take:
                yield name, first, flat[offset : offset + take]
            offset += n
    if offset != flat.size:
        raise UserError(
            f"{part.path}: {flat.size} fp32 elements, the parameter shapes need {offset} per rank at world size "
            f"{world_size}: a rank file from another checkpoint or world size"
        )


def zero3_frozen_pieces(
    shapes: dict[str, tuple[int, ...]], fragments: dict[str, np.ndarray], path: Path, rank: int, world_size: int
) -> Iterator[Piece]:
    """The pieces of the frozen parameters in rank ``rank``'s ZeRO-3 model-states file (``fragments``, whole
    tensors' flat partitions, in the training dtype: the caller converts them to fp32)."""
    for name, shape in shapes.items():
        numel = math.prod(shape)
        n = zero3_partition_numel(numel, world_size)
        frag = fragments.get(name)
        if frag is None or frag.size != n:
            raise UserError(
                f"{path}: frozen parameter {name} has {None if frag is None else frag.size} elements on rank "
                f"{rank}, {n} expected at world size {world_size}: a rank file from another checkpoint or world size"
            )
        first = rank * n
        take = max(0, min(n, numel - first))
        if take:
            yield name, first, frag.reshape(-1)[:take]
