"""Process-group set-up and teardown in one place (FACTS.md: DeepSpeed on CPU)."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       local_rank: int | None = None) -> None:
    """Export the rank variables ourselves (so DeepSpeed never falls back to its own MPI discovery) and
    start DeepSpeed's process group: NCCL on GPUs, gloo on the CPU."""
    local = rank if local_rank is None else local_rank
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local), MASTER_ADDR=master_addr,
                      MASTER_PORT=str(master_port))
    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False,
                               distributed_port=master_port, rank=rank, world_size=world_size, verbose=False)


def teardown() -> None:
    """Collect the engine's objects, then barrier and destroy the group: without this, multi-rank CPU runs
    sometimes abort at exit ("terminate called without an active exception", 6 of 28 runs in FACTS.md)."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
