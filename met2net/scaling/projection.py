"""Projected step time, throughput and data-parallel efficiency at 8 … 1024 GPUs for ZeRO 0–3: pure arithmetic on
a measured compute time per sample, the model's size and a description of the network (docs/scaling.md).

A step is compute (``batch_per_rank × compute_s_per_sample``) plus the communication that is not hidden behind
backward. The communication is the ring algorithm's: a reduce-scatter or an all-gather of S bytes over n ranks moves
(n−1)/n · S through every rank's link in n−1 steps, each paying the link's latency once. An all-reduce is a
reduce-scatter then an all-gather. ZeRO 0 all-reduces the gradients; ZeRO 1/2 reduce-scatter them and all-gather the
updated parameters, the same volume; ZeRO 3 all-gathers the parameters in forward and again in backward and
reduce-scatters the gradients: 1.5× the data-parallel volume (Rajbhandari et al., ZeRO, §7). The ring runs at the
pace of its slowest link: the node's links while all ranks fit in one node, the network between nodes beyond it.

The volume is the ring's; the latency is paid per *ring pass*: every collective call is one pass (an all-reduce two),
and DeepSpeed makes many calls per step (a gradient bucket, a ZeRO-3 per-module gather each). ``DEFAULT_PASSES`` is
the fewest a stage can make (one call per pass); a measured or predicted count per stage (``Workload.passes``,
``predicted_passes``) replaces it.

Efficiency is against one GPU at the same per-rank batch, which communicates nothing: compute ÷ step time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from met2net.errors import UserError

GB = 1e9  # bandwidths are in GB/s = 10⁹ bytes/s, the unit of nccl-tests and of vendors' link speeds
WORLD_SIZES = tuple(2**k for k in range(3, 11))  # 8 … 1024
TARGET_EFFICIENCY = 0.9
# ring passes per optimizer step with one call per pass: ZeRO 0–2 reduce-scatter + all-gather (an all-reduce is the
# two), ZeRO 3 two parameter all-gathers + a gradient reduce-scatter
DEFAULT_PASSES = (2.0, 2.0, 2.0, 3.0)


@dataclass(frozen=True)
class Link:
    """What one ring gets on a link: bandwidth in GB/s through each rank's connection, latency per ring step in µs."""

    bandwidth_gbs: float
    latency_us: float

    def __post_init__(self) -> None:
        if not self.bandwidth_gbs > 0 or self.latency_us < 0:
            raise UserError(f"a link needs a bandwidth > 0 GB/s and a latency ≥ 0 µs, got {self}")


@dataclass(frozen=True)
class Network:
    """The node's links (``intra``, e.g. NVLink), the links between nodes (``inter``: what a ring gets through them)
    and how many GPUs a node holds."""

    intra: Link
    inter: Link
    gpus_per_node: int

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise UserError(f"gpus per node must be ≥ 1, got {self.gpus_per_node}")

    @classmethod
    def uniform(cls, link: Link) -> Network:
        """One link everywhere: what ``calibration.calibrate`` fits from measurements within one regime."""
        return cls(link, link, 1)

    def link(self, world_size: int) -> Link:
        """The ring's slowest link: between nodes as soon as the ranks span more than one node."""
        return self.intra if world_size <= self.gpus_per_node else self.inter


@dataclass(frozen=True)
class Workload:
    """Measured on one GPU: forward + backward + optimizer seconds per sample at the micro-batch it was measured at
    (assumed constant per sample at other batches), the communicated parameters and their element size, and the ring
    passes per optimizer step of ZeRO 0, 1, 2, 3 (``DEFAULT_PASSES`` when not given)."""

    compute_s_per_sample: float
    parameters: int
    bytes_per_element: int = 4
    passes_per_step: tuple[float, float, float, float] = DEFAULT_PASSES

    @property
    def bytes(self) -> int:
        return self.parameters * self.bytes_per_element

    def passes(self, zero_stage: int) -> float:
        _check_stage(zero_stage)
        return self.passes_per_step[zero_stage]


@dataclass(frozen=True)
class Projection:
    world_size: int
    zero_stage: int
    batch_per_rank: int
    compute_s: float
    comm_s: float  # the whole communication of one step
    exposed_s: float  # the part not hidden behind backward
    step_s: float
    samples_per_s: float
    efficiency: float
    batch_for_target: int  # global batch (world size × samples per rank) for the target efficiency


def _check_stage(zero_stage: int) -> None:
    if zero_stage not in (0, 1, 2, 3):
        raise UserError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero_stage}")


def ring_factors(world_size: int, zero_stage: int, passes: float | None = None) -> tuple[float, float]:
    """(v, k) of one step: every rank's link carries v·S bytes, and the step waits k link latencies.

    The volume is two ring passes of S (reduce-scatter + all-gather) at ZeRO 0–2, three at ZeRO 3 (two parameter
    all-gathers and a gradient reduce-scatter), each (n−1)/n · S. The latency is n−1 ring steps per pass *call*:
    ``passes`` calls per step (default ``DEFAULT_PASSES``: one per pass), however the volume is split among them."""
    _check_stage(zero_stage)
    if world_size < 1:
        raise UserError(f"world size must be ≥ 1, got {world_size}")
    if passes is None:
        passes = DEFAULT_PASSES[zero_stage]
    if passes < 0:
        raise UserError(f"ring passes per step must be ≥ 0, got {passes}")
    n = world_size
    return DEFAULT_PASSES[zero_stage] * (n - 1) / n, passes * (n - 1)


def comm_time(world_size: int, zero_stage: int, num_bytes: float, link: Link, passes: float | None = None) -> float:
    """Seconds of one step's gradient (and, at ZeRO 3, parameter) communication on ``link``, ``passes`` ring passes
    per step (``ring_factors``)."""
    volume, steps = ring_factors(world_size, zero_stage, passes)
    return volume * num_bytes / (link.bandwidth_gbs * GB) + steps * link.latency_us * 1e-6


def exposed_time(comm_s: float, compute_s: float, overlap: float) -> float:
    """The communication left after hiding the fraction ``overlap`` of it behind computation; what is hidden can
    never exceed the step's compute time."""
    if not 0 <= overlap <= 1:
        raise UserError(f"overlap must be a fraction between 0 and 1, got {overlap}")
    return comm_s - min(overlap * comm_s, compute_s)


def batch_for_efficiency(compute_s_per_sample: float, comm_s: float, overlap: float, target: float) -> int:
    """The fewest samples per rank whose step reaches ``target`` efficiency.

    With c = samples × compute per sample and T the communication, efficiency = c / (c + exposed) and exposed =
    max((1−o)·T, T − c); so efficiency ≥ e exactly when c ≥ e/(1−e) · (1−o) · T and c ≥ e · T."""
    if not 0 < target < 1:
        raise UserError(f"target efficiency must be between 0 and 1, got {target}")
    if comm_s == 0:
        return 1
    ratio = target / (1 - target)
    compute_needed = max(ratio * (1 - overlap), target) * comm_s
    return max(1, math.ceil(compute_needed / compute_s_per_sample * (1 - 1e-12)))


def project(
    workload: Workload,
    network: Network,
    world_size: int,
    zero_stage: int,
    batch_per_rank: int,
    overlap: float = 0.0,
    target: float = TARGET_EFFICIENCY,
) -> Projection:
    """One (world size, ZeRO stage) point; ``batch_per_rank`` samples per rank per optimizer step."""
    if batch_per_rank < 1 or not workload.compute_s_per_sample > 0:
        raise UserError("the batch per rank must be ≥ 1 and the compute time per sample > 0")
    compute = batch_per_rank * workload.compute_s_per_sample
    comm = comm_time(world_size, zero_stage, workload.bytes, network.link(world_size), workload.passes(zero_stage))
    exposed = exposed_time(comm, compute, overlap)
    step = compute + exposed
    per_rank = batch_for_efficiency(workload.compute_s_per_sample, comm, overlap, target)
    return Projection(
        world_size=world_size,
        zero_stage=zero_stage,
        batch_per_rank=batch_per_rank,
        compute_s=compute,
        comm_s=comm,
        exposed_s=exposed,
        step_s=step,
        samples_per_s=world_size * batch_per_rank / step,
        efficiency=compute / step,
        batch_for_target=world_size * per_rank,
    )


def project_all(
    workload: Workload,
    network: Network,
    batch_per_rank: int,
    world_sizes: Iterable[int] = WORLD_SIZES,
    stages: Iterable[int] = (0, 1, 2, 3),
    overlap: float = 0.0,
    target: float = TARGET_EFFICIENCY,
) -> list[Projection]:
    stages = tuple(stages)
    return [project(workload, network, n, z, batch_per_rank, overlap, target) for n in world_sizes for z in stages]


def markdown(projections: Sequence[Projection], target: float = TARGET_EFFICIENCY) -> str:
    head = (
        "| GPUs | ZeRO | step (ms) | of which exposed comm (ms) | samples/s | efficiency | "
        f"global batch for ≥ {target:.0%} |\n|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {p.world_size} | {p.zero_stage} | {p.step_s * 1e3:.2f} | {p.exposed_s * 1e3:.2f} | "
        f"{p.samples_per_s:,.1f} | {p.efficiency:.3f} | {p.batch_for_target:,} |"
        for p in projections
    ]
    return "\n".join([head, *rows])
