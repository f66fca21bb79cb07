"""torch.distributed internals met2net relies on for its collective timeout (``distributed.timeout_s``).

DeepSpeed creates its own process groups with ``torch.distributed.new_group(ranks)`` and no timeout (its clone of
the world group, which ZeRO all-reduces and reduce-scatters on: ``deepspeed.utils.groups._clone_world_group``).
torch then gives them *its* default — 30 minutes for gloo, 10 for NCCL — not the timeout the world group was
started with: a rank waiting for a stopped peer sat in a ZeRO-2 all-reduce for more than 240 s although
``init_distributed`` had been given less. ``torch.distributed.distributed_c10d._get_default_timeout`` reads the
module globals ``default_pg_timeout`` and ``default_pg_nccl_timeout`` on every ``new_group`` call; setting them
makes every group created afterwards, by anyone, wait as long as ours (``tests/distributed/test_hang_safety.py``
reads each group's timeout back).
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d


def set_new_group_timeout(timeout: timedelta) -> None:
    """Every process group created from now on without an explicit timeout waits ``timeout`` (gloo and NCCL)."""
    c10d.default_pg_timeout = timeout
    c10d.default_pg_nccl_timeout = timeout


def group_timeouts() -> list[float]:
    """The timeout, in seconds, of every live process group (the world group first), as its backend holds it."""
    device = torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
    groups = sorted(c10d._world.pg_names, key=lambda pg: c10d._world.pg_names[pg])
    return [pg._get_backend(device).options._timeout.total_seconds() for pg in groups]


def abort_process_groups() -> None:
    """End every process group without waiting for the other ranks, after this rank failed: NCCL's communicators are
    aborted (``_abort_process_group``: a pending collective would make ``destroy_process_group`` wait); gloo's
    groups hold no pending work here and are destroyed."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        c10d._abort_process_group()
    else:
        dist.destroy_process_group()
