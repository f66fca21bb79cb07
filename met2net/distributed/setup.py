"""Device binding, process-group set-up and teardown in one place (FACTS.md: DeepSpeed on CPU)."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Mapping

import torch
import torch.distributed as dist

from met2net.compat.deepspeed_internals import disable_shm_comm_op, point_local_rank_at
from met2net.distributed.devices import DeviceBindingError, DeviceChoice, select_device, visible_devices
from met2net.distributed.env import RankInfo, export


def bind_device(info: RankInfo, env: Mapping[str, str] = os.environ) -> DeviceChoice:
    """This rank's device (``devices.select_device``), made current and touched with a one-element allocation
    before any process group forms: a binding that cannot work (an ordinal the task does not see, a GPU in
    exclusive mode that another process holds, a broken driver) fails here within seconds on the rank that has
    it, instead of every rank hanging in the first collective."""
    num_visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choice = select_device(num_visible, info.local_rank, info.local_world_size, env)
    if choice.index is None:
        return choice
    try:
        torch.cuda.set_device(choice.index)
        torch.empty(1, device=choice.name)  # creates the CUDA context now
    except RuntimeError as e:
        raise DeviceBindingError(
            f"rank {info.rank} (local rank {info.local_rank}) on {socket.gethostname()} cannot use {choice.name} "
            f"of the {num_visible} GPU(s) it sees (CUDA_VISIBLE_DEVICES={visible_devices(env)}): {e}"
        ) from e
    return choice


def init_process_group(info: RankInfo, choice: DeviceChoice | None = None) -> DeviceChoice:
    """Bind the device (unless ``choice`` says it is bound), export the rank variables ourselves (so DeepSpeed never
    falls back to its own MPI discovery) and start DeepSpeed's process group: NCCL on GPUs, gloo on the CPU.
    Returns the device choice."""
    choice = choice or bind_device(info)
    export(info, os.environ)
    cuda = choice.index is not None
    if cuda:
        point_local_rank_at(choice.index, os.environ)  # DeepSpeed's device is cuda:<LOCAL_RANK>
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
    return choice


def teardown() -> None:
    """Collect the engine's objects, then barrier and destroy the group: without this, multi-rank CPU runs
    sometimes abort at exit ("terminate called without an active exception", 6 of 28 runs in FACTS.md)."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
