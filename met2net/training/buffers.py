"""BatchNorm running statistics under data parallelism.

DDP broadcasts rank 0's buffers every step; DeepSpeed does not, so each rank's BatchNorms track the
statistics of that rank's micro-batches only and the ranks drift apart. ``average_batchnorm_statistics``
averages the floating running statistics (``running_mean``, ``running_var``; not ``num_batches_tracked``,
which is the same on every rank) across the ranks, and every rank continues from the average. The loop
calls it before each validation, so validation sees one model on every rank, and for each checkpoint's
``model.pt`` (rank 0's), which holds the statistics of all ranks' data; there every rank then goes back to its
own statistics (also saved per rank), so where checkpoints fall never changes the run and a resume is bitwise.

Why the average is the right statistic: the running-mean update ``r ← (1−m)·r + m·μ_batch`` is linear,
so averaging the ranks' running means at a sync point equals running the update with the average of the
ranks' batch means — for equal micro-batches, the mean of the global batch (what one process with the
whole batch would track). The running variance is only close: the mean of per-rank (unbiased) variances
leaves out the spread between the ranks' means, and their Bessel corrections use the micro-batch size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

STATISTICS = ("running_mean", "running_var")


def batchnorm_statistics(module: nn.Module) -> list[torch.Tensor]:
    """The floating running statistics of every BatchNorm in ``module`` (trained and momentum copies), in
    module order: the same list on every rank of one model."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out.extend(getattr(m, name) for name in STATISTICS if getattr(m, name) is not None)
    return out


@torch.no_grad()
def set_batchnorm_statistics(module: nn.Module, values: list[torch.Tensor]) -> None:
    """Copy ``values`` (a ``batchnorm_statistics`` list, e.g. saved by this rank) into ``module``'s statistics."""
    own = batchnorm_statistics(module)
    if len(own) != len(values):
        raise ValueError(f"{len(values)} saved BatchNorm statistics for a model with {len(own)}")
    for b, v in zip(own, values):
        b.copy_(v)


@torch.no_grad()
def average_batchnorm_statistics(module: nn.Module, group: dist.ProcessGroup | None = None) -> int:
    """Replace every BatchNorm's running mean and variance by their average over the ranks of ``group``
    (default: the world), identically on every rank; returns the number of values averaged.

    The ranks' values are gathered and summed in rank order on every rank, so every rank computes the same
    bits whatever the backend's reduction order. A no-op without a process group or on one rank.
    """
    buffers = batchnorm_statistics(module)
    if not buffers or not dist.is_available() or not dist.is_initialized():
        return 0
    world = dist.get_world_size(group)
    if world == 1:
        return 0
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat, group=group)
    total = gathered[0].clone()
    for other in gathered[1:]:
        total += other
    average = total / world
    offset = 0
    for b in buffers:
        b.copy_(average[offset : offset + b.numel()].view_as(b))
        offset += b.numel()
    return int(flat.numel())
