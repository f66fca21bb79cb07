"""Run a function on N real processes joined by a real gloo process group (DeepSpeed's CPU backend).

Each rank's return value is saved with torch.save and handed back in rank order.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from met2net.distributed.env import RankInfo, free_port

ROOT = Path(__file__).resolve().parents[2]


def local_rank_info(rank: int, world_size: int, port: int) -> RankInfo:
    """Rank ``rank`` of ``world_size`` processes on this machine."""
    return RankInfo(
        rank=rank,
        world_size=world_size,
        local_rank=rank,
        local_world_size=world_size,
        node_rank=0,
        num_nodes=1,
        master_addr="127.0.0.1",
        master_port=port,
        launcher="single",
    )


def run_ranks(fn, world_size: int, out_dir: Path, *args) -> list:
    port = free_port()
    mp.start_processes(
        _entry, args=(fn, world_size, port, str(out_dir), args), nprocs=world_size, join=True, start_method="spawn"
    )
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _entry(rank: int, fn, world_size: int, port: int, out_dir: str, args: tuple) -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    from met2net.distributed.setup import init_process_group, teardown

    init_process_group(local_rank_info(rank, world_size, port))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        teardown()
