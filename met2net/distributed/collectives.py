"""The few collectives the trainer and the checkpoint manager need, no-ops on one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from met2net.errors import UserError

T = TypeVar("T")


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def on_rank0(fn: Callable[..., T], rank: int, world_size: int, *args: Any) -> T | None:
    """``fn(*args)`` on rank 0 while the others wait; its result reaches every rank (it must pickle), and an
    error there is raised on every rank, so no rank waits forever in a later collective."""
    result, error = None, None
    if rank == 0:
        try:
            result = fn(*args)
        except Exception as e:  # reported to the other ranks, then raised here
            error = e
    if world_size > 1:
        message = [result, None if error is None else (isinstance(error, UserError), f"rank 0: {error}")]
        dist.broadcast_object_list(message, src=0)
        result = message[0]
        if message[1] is not None and error is None:
            user, text = message[1]
            raise (UserError if user else RuntimeError)(text)  # a user error stays one: one line, exit code 2
    if error is not None:
        raise error
    return result


def host_group(world_size: int) -> dist.ProcessGroup | None:
    """A gloo group over all ranks for the small agreements the loop makes every step (the stop flag): its tensors
    stay on the host, so agreeing reads no CUDA tensor and does not wait for the device. Call it on every rank at
    the same point (it is a collective). None: one process, or the default group is gloo already."""
    if world_size == 1 or not dist.is_initialized() or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def gather_to_all(obj: T, world_size: int) -> list[T]:
    """Every rank's ``obj`` (it must pickle), in rank order, on every rank; ``[obj]`` on one process."""
    if world_size == 1:
        return [obj]
    everyone: list[T | None] = [None] * world_size
    dist.all_gather_object(everyone, obj)
    return everyone  # type: ignore[return-value]
