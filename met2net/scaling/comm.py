"""`met2net scale comm`: time all-reduce, all-gather and reduce-scatter on the backend training uses (gloo on CPU,
NCCL on GPUs), so a projection (`projection.py`) can start from this cluster's bandwidth and latency rather than a
datasheet's.

Sizes and bandwidths follow nccl-tests: a size is the whole buffer (all-reduce's tensor, all-gather's output,
reduce-scatter's input; each rank holds 1/n of the latter two); algorithm bandwidth = size / time; bus bandwidth
= algorithm bandwidth × 2(n−1)/n for all-reduce and × (n−1)/n for the others, the rate each rank's link carried in
a ring, comparable across n and with the link's own speed. The time of one op is the slowest rank's, after a
barrier; the reported time is the median over the timed iterations, after warm-up.
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from met2net.distributed.env import discover, free_port
from met2net.distributed.setup import bind_device
from met2net.errors import UserError

OPS = ("all_reduce", "all_gather", "reduce_scatter")
ELEMENT = 4  # float32
# torch ≥ 2.13 names the single-tensor collectives *_single and deprecates the older names, which torch 2.4 has alone
ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
COLUMNS = ("op", "bytes", "world_size", "backend", "time_us", "algbw_gbs", "busbw_gbs")


def bus_factor(op: str, world_size: int) -> float:
    """nccl-tests' factor from algorithm to bus bandwidth: the share of the buffer each rank's link carries."""
    n = world_size
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    raise UserError(f"unknown collective {op!r}: one of {', '.join(OPS)}")


def buffer_bytes(requested: int, world_size: int) -> int:
    """``requested`` rounded down to whole float32 elements that split evenly over the ranks (at least one each)."""
    quantum = world_size * ELEMENT
    return max(quantum, requested // quantum * quantum)


@dataclass(frozen=True)
class Timing:
    op: str
    bytes: int
    world_size: int
    backend: str
    time_s: float

    @property
    def algbw_gbs(self) -> float:
        return self.bytes / self.time_s / 1e9

    @property
    def busbw_gbs(self) -> float:
        return self.algbw_gbs * bus_factor(self.op, self.world_size)


def _collective(op: str, num_bytes: int, world_size: int, device: torch.device) -> Callable[[], object]:
    """A closure that runs ``op`` once on buffers allocated here."""
    numel = num_bytes // ELEMENT
    if op == "all_reduce":
        buf = torch.ones(numel, device=device)
        return lambda: dist.all_reduce(buf)
    if op == "all_gather":
        out = torch.empty(numel, device=device)
        shard = torch.ones(numel // world_size, device=device)
        return lambda: ALL_GATHER(out, shard)
    full = torch.ones(numel, device=device)
    shard = torch.empty(numel // world_size, device=device)
    return lambda: REDUCE_SCATTER(shard, full)


def time_collective(op: str, num_bytes: int, world_size: int, device: torch.device, iters: int, warmup: int) -> float:
    """Median over ``iters`` (after ``warmup``) of the slowest rank's seconds for one ``op``; every rank gets it."""
    run = _collective(op, num_bytes, world_size, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()
        sync()
        tic = time.perf_counter()
        run()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    slowest = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return statistics.median(slowest.tolist())


def benchmark(sizes: Sequence[int], iters: int, warmup: int) -> list[Timing] | None:
    """Every op × size on this job's ranks (torchrun, srun or mpirun); None on a single process."""
    if iters < 1 or warmup < 0:
        raise UserError(f"--iters must be ≥ 1 and --warmup ≥ 0, got {iters} and {warmup}")
    info = discover(os.environ, default_port=free_port())
    if info.world_size == 1:
        return None
    choice = bind_device(info)
    backend = "nccl" if choice.index is not None else "gloo"
    device = torch.device(choice.name)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank,
        world_size=info.world_size,
        timeout=timedelta(seconds=300),
    )
    try:
        n = info.world_size
        return [
            Timing(op, b, n, backend, time_collective(op, b, n, device, iters, warmup))
            for b in sorted({buffer_bytes(s, n) for s in sizes})
            for op in OPS
        ]
    finally:
        dist.barrier()
        dist.destroy_process_group()


def is_rank0() -> bool:
    return discover(os.environ).rank == 0


def table(timings: Sequence[Timing]) -> str:
    n, backend = timings[0].world_size, timings[0].backend
    head = (
        f"{n} ranks, {backend}; time = median of the slowest rank's; bus bandwidth as nccl-tests\n\n"
        "| op | bytes | time (µs) | algorithm GB/s | bus GB/s |\n|---|---:|---:|---:|---:|"
    )
    rows = [
        f"| {t.op} | {t.bytes:,} | {t.time_s * 1e6:,.1f} | {t.algbw_gbs:.3f} | {t.busbw_gbs:.3f} |" for t in timings
    ]
    smallest = min(t.bytes for t in timings)
    latency = next(t for t in timings if t.op == "all_reduce" and t.bytes == smallest)
    tail = f"\nlatency (all-reduce of {smallest:,} bytes): {latency.time_s * 1e6:,.1f} µs"
    return "\n".join([head, *rows, tail])


def write_csv(timings: Sequence[Timing], path: str | Path) -> Path:
    """One row per op × size; floats written in full (``repr``) so bus = algorithm × factor holds in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for t in timings:
            w.writerow(
                [t.op, t.bytes, t.world_size, t.backend, repr(t.time_s * 1e6), repr(t.algbw_gbs), repr(t.busbw_gbs)]
            )
    return path
