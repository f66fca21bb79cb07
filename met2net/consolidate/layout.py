"""The tensors a Met²Net of a given configuration holds, from the model itself: what consolidated weights are checked
against (``verify_consolidated``, the reference import). Imports torch and the model, unlike consolidation."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from met2net.config import ModelConfig
from met2net.consolidate.format import WEIGHT_SETS, ConsolidateError
from met2net.model.met2net import COPIES, TRAINED, Met2Net


def expected_tensors(cfg: ModelConfig, weights: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name → (shape, dtype) of every tensor a model of ``cfg`` holds for ``weights`` ("inference": no momentum
    copies; "all": with them), in ``state_dict`` order."""
    if weights not in WEIGHT_SETS:
        raise ConsolidateError(f"weights {weights!r}: expected one of {', '.join(WEIGHT_SETS)}")
    trained = {name: (shape, dtype) for name, shape, dtype, _ in _layout(_key(cfg))}
    if weights == "inference":
        return trained
    return {**trained, **{_copy_of(name): value for name, value in trained.items()}}


def buffer_names(cfg: ModelConfig, weights: str) -> set[str]:
    """The buffers (BatchNorm running statistics) among ``expected_tensors``."""
    names = {name for name, _, _, is_buffer in _layout(_key(cfg)) if is_buffer}
    return names | {_copy_of(n) for n in names} if weights == "all" else names


def num_parameters(cfg: ModelConfig, weights: str) -> int:
    n = sum(math.prod(shape) for _, shape, _, is_buffer in _layout(_key(cfg)) if not is_buffer)
    return 2 * n if weights == "all" else n


def _key(cfg: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


@functools.lru_cache(maxsize=8)
def _layout(key: str) -> tuple[tuple[str, tuple[int, ...], torch.dtype, bool], ...]:
    """The trained copies' tensors (name, shape, dtype, is a buffer); a momentum copy is built like its trained twin
    (``Met2Net.__init__``), so its tensors are the same under the ``_k`` name. Built on the meta device: no memory."""
    with torch.device("meta"), _ShapesOnly():
        model = Met2Net(ModelConfig(**json.loads(key)), with_copies=False)
    buffers = {n for n, _ in model.named_buffers()}
    return tuple((n, tuple(v.shape), v.dtype, n in buffers) for n, v in model.state_dict().items())


class _ShapesOnly(TorchFunctionMode):
    """Skips the weight initialisers inside its block (this thread only): on the meta device ``normal_`` runs torch's
    Python reference, whose first call imports torch's compiler (1.4 s), and a layout needs the shapes alone."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in (nn.init.normal_, nn.init.trunc_normal_):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _copy_of(name: str) -> str:
    head, _, rest = name.partition(".")
    return f"{COPIES[TRAINED.index(head)]}.{rest}"
