"""What one rank holds: bytes of parameters, gradients and optimizer state, and its peak memory (docs/scaling.md).

Counted from the tensors themselves, not from a formula, so that what ZeRO really partitions shows: a tensor is
counted by the storage behind it, once (DeepSpeed keeps parameters and gradients as views into flat buffers; a buffer
counts whole). Taken inside the optimizer's own step, when every piece is present:

- parameters: the model's parameters as this rank holds them, trained and frozen (the momentum copies); a ZeRO-3
  parameter by its partition, plus its whole data where that is kept (small parameters stay gathered:
  ``deepspeed.stage3_param_persistence_threshold``);
- gradients: the model parameters' ``.grad`` and the gradients of the tensors the optimizer updates (ZeRO 1–3: this
  rank's flat fp32 partitions). DeepSpeed's communication buckets are scratch space and not counted;
- optimizer state: the optimizer's state tensors (Adam's two moments) and the tensors it updates where they are not
  the model's own parameters (ZeRO 1–3's fp32 master partitions, which the ZeRO paper counts as optimizer state).
"""

from __future__ import annotations

import resource
from collections.abc import Iterable
from typing import Any

import torch

from met2net.compat.deepspeed_internals import is_zero3, partition, whole_numel

MIB = 2**20


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def storage_bytes(tensors: Iterable[torch.Tensor], exclude: set[tuple[str, int]] = frozenset()) -> int:
    """Bytes of the distinct storages behind ``tensors``, leaving out those in ``exclude``."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        key = storage_key(t)
        if key not in exclude:
            seen[key] = t.untyped_storage().nbytes()
    return sum(seen.values())


def innermost_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer that updates the tensors: the engine's own (plain PyTorch, ZeRO 0), or the one a ZeRO
    optimizer wraps (``.optimizer``)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"no torch optimizer inside {type(optimizer).__name__}")
    return optimizer


def trainable_count(model: torch.nn.Module) -> int:
    """Trained parameters, whole (a ZeRO-3 parameter's data may be empty here)."""
    return sum(whole_numel(p) for p in model.parameters() if p.requires_grad)


def held_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    held = []
    for p in model.parameters():
        if is_zero3(p):
            held.append(partition(p))
        held.append(p.data)
    return [t for t in held if t.numel()]


def footprint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """``parameters_bytes``, ``gradients_bytes`` and ``optimizer_bytes`` this rank holds now (call it inside the
    optimizer's step, after the update: gradients and state are both there)."""
    params = held_parameters(model)
    param_keys = {storage_key(t) for t in params}
    updated = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad for p in [*model.parameters(), *updated] if p.grad is not None and p.grad.numel()]
    state = [v for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"]
    masters = [p for p in updated if p.numel()]
    return {
        "parameters_bytes": storage_bytes(params),
        "gradients_bytes": storage_bytes(grads),
        "optimizer_bytes": storage_bytes(state) + storage_bytes(masters, exclude=param_keys),
    }


def peak_memory_mib(device: torch.device) -> dict[str, float]:
    """``peak_rss_mib``: the process's largest resident set so far (Linux reports KiB); on a GPU also
    ``cuda_max_allocated_mib``, the most the caching allocator handed out. ``peak_memory_mib`` is the one that
    bounds the batch: the GPU's on a GPU, the RSS on the CPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_rss_mib": rss, "peak_memory_mib": rss}
    if device.type == "cuda":
        cuda = torch.cuda.max_memory_allocated(device) / MIB
        out.update(cuda_max_allocated_mib=cuda, peak_memory_mib=cuda)
    return out
