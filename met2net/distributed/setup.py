"""Process-group set-up and teardown in one place (FACTS.md: DeepSpeed on CPU)."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

from met2net.compat.deepspeed_internals import disable_shm_comm_op
from met2net.distributed.env import RankInfo, export


def init_process_group(info: RankInfo) -> None:
    """Export the rank variables ourselves (so DeepSpeed never falls back to its own MPI discovery) and
    start DeepSpeed's process group: NCCL on GPUs, gloo on the CPU."""
    export(info, os.environ)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(info.local_rank)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed

    if not cuda:
        disable_shm_comm_op()
    deepspeed.init_distributed(
        dist_backend="nccl" if cuda else "gloo",
        auto_mpi_discovery=False,
        distributed_port=info.master_port,
        rank=info.rank,
        world_size=info.world_size,
        verbose=False,
    )


def teardown() -> None:
    """Collect the engine's objects, then barrier and destroy the group: without this, multi-rank CPU runs
    sometimes abort at exit ("terminate called without an active exception", 6 of 28 runs in FACTS.md)."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
