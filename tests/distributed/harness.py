"""Run a function on N real processes joined by a real gloo process group (DeepSpeed's CPU backend).

Each rank's return value is saved with torch.save and handed back in rank order.
"""

from __future__ import annotations

import os
import time
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


# No test's ranks run this long even on a loaded 2-core machine; a deadlock (a rank waiting in a collective that
# another rank never enters) then fails the test instead of hanging the whole suite.
TIMEOUT_S = float(os.environ.get("MET2NET_TEST_RANKS_TIMEOUT", "900"))


def run_ranks(fn, world_size: int, out_dir: Path, *args, timeout_s: float = TIMEOUT_S) -> list:
    """``fn(rank, world_size, *args)`` on ``world_size`` spawned ranks; their results in rank order. A rank that
    fails ends the others (torch's spawn context); ranks still running after ``timeout_s`` are killed and the
    call raises TimeoutError. The ranks meet through a file under ``out_dir`` (torch's FileStore), not a TCP port:
    a port found free can be taken by another test's process before rank 0 binds it."""
    port = free_port()  # exported as MASTER_PORT all the same (code under test may read it), never bound
    rendezvous = Path(out_dir) / f"rendezvous-{os.getpid()}-{time.monotonic_ns()}"
    context = mp.start_processes(
        _entry,
        args=(fn, world_size, port, str(out_dir), args, f"file://{rendezvous}"),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            alive = [r for r, p in enumerate(context.processes) if p.is_alive()]
            for p in context.processes:
                p.kill()
            raise TimeoutError(f"ranks {alive} of {world_size} still running after {timeout_s:.0f} s: killed")
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _entry(rank: int, fn, world_size: int, port: int, out_dir: str, args: tuple, init_method: str) -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    from met2net.distributed.setup import init_process_group, teardown

    init_process_group(local_rank_info(rank, world_size, port), init_method=init_method)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        teardown()
