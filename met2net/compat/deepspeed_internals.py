"""DeepSpeed internals met2net relies on (tested with the versions in ``met2net.compat``).

ZeRO-3 parameters: DeepSpeed replaces ``param.data`` by an empty tensor outside a gather and keeps this rank's
partition in ``param.ds_tensor`` and the whole size in ``param.ds_numel``; ``deepspeed.zero.GatheredParameters``
makes parameters whole for the length of a ``with`` block (and, with ``modifier_rank``, partitions what that rank
wrote on exit). None of these attributes is documented API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from torch import nn


def is_zero3(param: nn.Parameter) -> bool:
    """True for a parameter partitioned by ZeRO-3 (it carries ``ds_tensor``)."""
    return hasattr(param, "ds_tensor")


def partition(param: nn.Parameter):
    """This rank's flat partition of a ZeRO-3 parameter."""
    return param.ds_tensor


def is_whole(param: nn.Parameter) -> bool:
    """A ZeRO-3 parameter whose full data is present now (gathered, or small and persistent) and is not the
    partition itself (which it is on one rank)."""
    return param.data.numel() == param.ds_numel and param.data.data_ptr() != param.ds_tensor.data_ptr()


def is_gathered(param: nn.Parameter) -> bool:
    return param.data.numel() == param.ds_numel


def gathered(params: Iterable[nn.Parameter], modifier_rank: int | None = None) -> contextlib.AbstractContextManager:
    """The parameters whole inside the block when ZeRO-3 partitions them; a no-op otherwise."""
    params = list(params)
    if not params or not is_zero3(params[0]):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
