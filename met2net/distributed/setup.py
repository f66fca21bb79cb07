"""Process-group set-up and teardown in one place (FACTS.md: DeepSpeed on CPU)."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

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
        _without_shm_comm_op()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False,
                               distributed_port=info.master_port, rank=info.rank, world_size=info.world_size,
                               verbose=False)


def _without_shm_comm_op() -> None:
    """On the CPU, DeepSpeed JIT-compiles a shared-memory op at start-up that only its *inference* all-reduce
    uses. Every process then takes a file lock in the extensions directory to run ninja, and a process killed
    meanwhile (a signal during start-up, a cancelled job) leaves the lock behind: every later run hangs.
    Training all-reduces through torch.distributed (gloo), so the op is turned off."""
    import deepspeed.ops

    compatible = dict(deepspeed.ops.__compatible_ops__)
    compatible["deepspeed_shm_comm"] = False
    deepspeed.ops.__compatible_ops__ = compatible


def teardown() -> None:
    """Collect the engine's objects, then barrier and destroy the group: without this, multi-rank CPU runs
    sometimes abort at exit ("terminate called without an active exception", 6 of 28 runs in FACTS.md)."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
