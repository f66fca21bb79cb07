"""Rank, world size and rendezvous address, read from whichever launcher started this process.

``discover`` is a pure function of an environment mapping so that every launcher (torchrun or the ``deepspeed``
launcher, ``srun``, ``mpirun``, none) is unit-tested with fake environments. ``export`` then writes the torch variables
itself, because DeepSpeed without them falls back to its own MPI discovery, which picks a non-loopback address and
port 29500.
"""

from __future__ import annotations

import itertools
import math
import re
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from met2net.errors import UserError

Launcher = Literal["torchrun", "slurm", "mpi", "single"]

LOOPBACK = "127.0.0.1"
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 12000

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_SLURM_STEP_VARS = ("SLURM_STEP_ID", "SLURM_STEPID")
_SLURM_WORLD_VARS = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
_SLURM_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
_MPI_LOCAL_PAIRS = (("MPI_LOCALRANKID", "MPI_LOCALNRANKS"), ("PMI_LOCAL_RANK", "PMI_LOCAL_SIZE"))


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job; ``node_rank`` and ``num_nodes`` count hosts, not processes."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    launcher: Launcher


class _Var(NamedTuple):
    """An integer with the variable it came from, so errors can name what to fix."""

    name: str
    value: int


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list (``"gpu[001-004,007],login1"``) as host names, zero padding kept.

    Several bracket groups in one name expand as a product, the first group varying slowest, as Slurm orders them.
    """
    if not nodelist.strip():
        return []
    hosts: list[str] = []
    for host in _split_hosts(nodelist.strip()):
        if not host:
            raise UserError(f"empty host name in node list {nodelist!r}")
        pieces = re.split(r"\[([^\]]*)\]", host)
        choices = [[piece] if i % 2 == 0 else _expand_ranges(piece, nodelist) for i, piece in enumerate(pieces)]
        hosts.extend("".join(parts) for parts in itertools.product(*choices))
    return hosts


def _split_hosts(nodelist: str) -> list[str]:
    """Split on the commas between hosts, not those inside brackets, and refuse unbalanced or nested brackets."""
    hosts, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        if char == "[":
            depth += 1
            if depth > 1:
                raise UserError(f"nested '[' in node list {nodelist!r}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"unbalanced ']' in node list {nodelist!r}")
        elif char == "," and depth == 0:
            hosts.append(nodelist[start:i])
            start = i + 1
    if depth:
        raise UserError(f"unbalanced '[' in node list {nodelist!r}")
    hosts.append(nodelist[start:])
    return hosts


def _expand_ranges(group: str, nodelist: str) -> list[str]:
    numbers = []
    for item in group.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise UserError(f"bad range {item!r} in node list {nodelist!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise UserError(f"range {item!r} runs backwards in node list {nodelist!r}")
        numbers.extend(f"{n:0{len(low)}d}" for n in range(int(low), int(high) + 1))
    return numbers


def discover(env: Mapping[str, str], default_port: int = 29500) -> RankInfo:
    """This process's place in the job, from the first launcher whose variables are present.

    Order: torchrun or the ``deepspeed`` launcher (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; they win over Slurm, so
    torchrun inside ``srun`` works), then a Slurm step, then MPI, then a single process. A Slurm step is recognised
    by ``SLURM_PROCID`` together with ``SLURM_STEP_ID``: ``srun`` sets the step id, while the batch script itself has
    ``SLURM_PROCID=0`` and ``SLURM_NTASKS=N`` but no step id, so a command started there without ``srun`` runs alone
    instead of waiting for peers that never come. When MPI variables disagree with the step's rank or size, the step
    is ``mpirun``'s daemon launch inside an allocation and MPI's numbering is the true one.

    ``default_port`` is used when neither ``MASTER_PORT`` nor a Slurm job id gives one; pass ``free_port()`` for
    single-process runs that may share a machine. A variable that is missing, malformed or inconsistent is a
    ``UserError`` naming it and the launcher it was read for.
    """
    launcher: Launcher = "torchrun" if any(name in env for name in _TORCHRUN_VARS) else "slurm"
    try:
        if launcher == "slurm" and not _in_srun_step(env):
            launcher = "mpi" if _mpi_rank_size(env) is not None else "single"
        return _LAUNCHERS[launcher](env, default_port)
    except UserError as e:
        raise UserError(
            f"launch environment ({_LAUNCHER_NAMES[launcher]}): {e}. These variables are the launcher's: start "
            "met2net through it unchanged, fix the ones named, or unset them to run one process (docs/cluster.md)"
        ) from None


def _single(env: Mapping[str, str], default_port: int) -> RankInfo:
    port = _int(env, "MASTER_PORT") or _Var("default_port", default_port)
    one = _Var("single process", 1)
    zero = _Var("single process", 0)
    return _checked(zero, one, zero, one, zero, one, LOOPBACK, port, "single")


_LAUNCHER_NAMES = {
    "torchrun": "torchrun or deepspeed: RANK, WORLD_SIZE, LOCAL_RANK",
    "slurm": "srun: SLURM_*",
    "mpi": "mpirun: OMPI_COMM_WORLD_* or PMI_*",
    "single": "one process",
}


def free_port() -> int:
    """A TCP port free on loopback right now; another process may still take it before the rendezvous binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def export(info: RankInfo, env: MutableMapping[str, str]) -> None:
    """Write the torch.distributed variables into ``env`` so DeepSpeed and torch use them as discovered."""
    env.update(
        RANK=str(info.rank),
        WORLD_SIZE=str(info.world_size),
        LOCAL_RANK=str(info.local_rank),
        LOCAL_WORLD_SIZE=str(info.local_world_size),
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
    )


def _from_torchrun(env: Mapping[str, str], default_port: int) -> RankInfo:
    """torchrun sets LOCAL_WORLD_SIZE and GROUP_RANK, the deepspeed launcher LOCAL_SIZE and CROSS_RANK; with neither,
    the job is taken to be one node."""
    rank, world, local_rank = (_need_int(env, name) for name in _TORCHRUN_VARS)
    local_world = _int(env, "LOCAL_WORLD_SIZE", "LOCAL_SIZE") or world
    per_node = max(local_world.value, 1)
    node_rank = _int(env, "GROUP_RANK", "CROSS_RANK") or _Var(f"RANK // {local_world.name}", rank.value // per_node)
    num_nodes = _int(env, "GROUP_WORLD_SIZE", "CROSS_SIZE") or _Var(
        f"WORLD_SIZE / {local_world.name}", math.ceil(world.value / per_node)
    )
    addr = _master_addr(env, single_node=local_world.value == world.value)
    port = _int(env, "MASTER_PORT") or _Var("default_port", default_port)
    return _checked(rank, world, local_rank, local_world, node_rank, num_nodes, addr, port, "torchrun")


def _in_srun_step(env: Mapping[str, str]) -> bool:
    if "SLURM_PROCID" not in env or not any(name in env for name in _SLURM_STEP_VARS):
        return False
    mpi = _mpi_rank_size(env)
    return mpi is None or mpi == (_need_int(env, "SLURM_PROCID").value, _need_int(env, *_SLURM_WORLD_VARS).value)


def _from_slurm(env: Mapping[str, str], default_port: int) -> RankInfo:
    """The ``SLURM_STEP_*`` variables describe this ``srun`` step and win over the job-wide ones, which differ when a
    step uses part of the allocation. The master is the step's first host, where task 0 runs."""
    rank = _need_int(env, "SLURM_PROCID")
    world = _need_int(env, *_SLURM_WORLD_VARS)
    local_rank = _need_int(env, "SLURM_LOCALID")
    node_rank = _need_int(env, "SLURM_NODEID")
    list_name = next((name for name in _SLURM_NODELIST_VARS if name in env), None)
    hosts = expand_nodelist(env[list_name]) if list_name else []
    num_nodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    if num_nodes is None:
        if not hosts:
            raise UserError(f"none of SLURM_STEP_NUM_NODES, SLURM_NNODES or {', '.join(_SLURM_NODELIST_VARS)} is set")
        num_nodes = _Var(str(list_name), len(hosts))
    local_world = _slurm_local_world(env, node_rank, num_nodes, world)
    if "MASTER_ADDR" in env:
        addr = env["MASTER_ADDR"]
    elif hosts:
        addr = hosts[0]
    else:
        raise UserError(f"none of {', '.join(_SLURM_NODELIST_VARS)} is set, so the master host is unknown")
    port = _int(env, "MASTER_PORT") or _slurm_port(env, default_port)
    return _checked(rank, world, local_rank, local_world, node_rank, num_nodes, addr, port, "slurm")


def _slurm_local_world(env: Mapping[str, str], node_rank: _Var, num_nodes: _Var, world: _Var) -> _Var:
    """Tasks on this node, from the per-node list (``"4(x2),3"``) where Slurm gives one, as nodes may differ."""
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if name in env:
            counts = _task_counts(name, env[name])
            if len(counts) != num_nodes.value:
                raise UserError(
                    f"{name}={env[name]!r} lists {len(counts)} nodes but {num_nodes.name}={num_nodes.value}"
                )
            if not 0 <= node_rank.value < len(counts):
                raise UserError(f"{node_rank.name}={node_rank.value} must lie in [0, {num_nodes.name}={len(counts)})")
            return _Var(name, counts[node_rank.value])
    per_node = _int(env, "SLURM_NTASKS_PER_NODE")
    if per_node is not None:
        return per_node
    if num_nodes.value < 1 or world.value % num_nodes.value:
        raise UserError(
            f"no SLURM_TASKS_PER_NODE, and {world.name}={world.value} does not split evenly over "
            f"{num_nodes.name}={num_nodes.value} nodes"
        )
    return _Var(f"{world.name} / {num_nodes.name}", world.value // num_nodes.value)


def _task_counts(name: str, value: str) -> list[int]:
    counts = []
    for item in value.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise UserError(f"{name}={value!r} is not a Slurm task count list like '4(x2),3'")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _slurm_port(env: Mapping[str, str], default_port: int) -> _Var:
    """``SLURM_PORT_BASE + job id % SLURM_PORT_SPAN``: jobs sharing a node get different ports (unless their ids differ
    by a multiple of the span), and every port lies below Linux's ephemeral range (32768+), so no outgoing connection
    already holds it. All tasks of the job agree on it without communicating."""
    job_id = _int(env, "SLURM_JOB_ID", "SLURM_JOBID")
    if job_id is None:
        return _Var("default_port", default_port)
    return _Var(job_id.name, SLURM_PORT_BASE + job_id.value % SLURM_PORT_SPAN)


def _mpi_rank_size(env: Mapping[str, str]) -> tuple[int, int] | None:
    for rank_name, size_name in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE")):
        if rank_name in env or size_name in env:
            return _need_int(env, rank_name).value, _need_int(env, size_name).value
    return None


def _from_mpi(env: Mapping[str, str], default_port: int) -> RankInfo:
    """Open MPI names its local rank and size; MPICH/Intel MPI (``MPI_LOCALRANKID``) and Cray PALS
    (``PMI_LOCAL_RANK``) may, and without them each rank counts as alone on its node. Nodes are assumed filled in
    rank order (the default by-slot mapping). ``mpirun`` does not tell us its first host, so a job that spans nodes
    needs ``MASTER_ADDR``."""
    if "OMPI_COMM_WORLD_RANK" in env or "OMPI_COMM_WORLD_SIZE" in env:
        rank, world = _need_int(env, "OMPI_COMM_WORLD_RANK"), _need_int(env, "OMPI_COMM_WORLD_SIZE")
        local_rank = _need_int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
        local_world = _need_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
    else:
        rank, world = _need_int(env, "PMI_RANK"), _need_int(env, "PMI_SIZE")
        pair = next(((r, s) for r, s in _MPI_LOCAL_PAIRS if r in env), None)
        if pair is None:
            local_rank, local_world = _Var("no local rank variable", 0), _Var("no local size variable", 1)
        else:
            local_rank, local_world = _need_int(env, pair[0]), _need_int(env, pair[1])
    per_node = max(local_world.value, 1)
    node_rank = _Var(f"{rank.name} // {local_world.name}", rank.value // per_node)
    num_nodes = _Var(f"{world.name} / {local_world.name}", math.ceil(world.value / per_node))
    addr = _master_addr(env, single_node=local_world.value == world.value)
    port = _int(env, "MASTER_PORT") or _Var("default_port", default_port)
    return _checked(rank, world, local_rank, local_world, node_rank, num_nodes, addr, port, "mpi")


def _master_addr(env: Mapping[str, str], single_node: bool) -> str:
    if "MASTER_ADDR" in env:
        return env["MASTER_ADDR"]
    if single_node:
        return LOOPBACK
    raise UserError(
        "MASTER_ADDR is not set and the job spans several nodes; the launcher cannot tell which host runs rank 0, "
        "so export MASTER_ADDR=<that host> (e.g. the first line of `scontrol show hostnames`) for every rank"
    )


def _int(env: Mapping[str, str], *names: str) -> _Var | None:
    """The first of ``names`` that is set, as an integer."""
    for name in names:
        if name in env:
            if not re.fullmatch(r"\s*[+-]?\d+\s*", env[name]):
                raise UserError(f"{name}={env[name]!r} is not an integer")
            return _Var(name, int(env[name]))
    return None


def _need_int(env: Mapping[str, str], *names: str) -> _Var:
    var = _int(env, *names)
    if var is None:
        raise UserError(f"{' or '.join(names)} is not set")
    return var


def _checked(
    rank: _Var,
    world: _Var,
    local_rank: _Var,
    local_world: _Var,
    node_rank: _Var,
    num_nodes: _Var,
    addr: str,
    port: _Var,
    launcher: Launcher,
) -> RankInfo:
    for index, size in ((rank, world), (local_rank, local_world), (node_rank, num_nodes)):
        if size.value < 1:
            raise UserError(f"{size.name}={size.value} must be at least 1")
        if not 0 <= index.value < size.value:
            raise UserError(f"{index.name}={index.value} must lie in [0, {size.name}={size.value})")
    if local_world.value > world.value:
        raise UserError(f"{local_world.name}={local_world.value} exceeds {world.name}={world.value}")
    if not 0 < port.value < 65536:
        raise UserError(f"{port.name}={port.value} is not a TCP port")
    if not addr:
        raise UserError("MASTER_ADDR is empty")
    return RankInfo(
        rank.value,
        world.value,
        local_rank.value,
        local_world.value,
        node_rank.value,
        num_nodes.value,
        addr,
        port.value,
        launcher,
    )


_LAUNCHERS = {"torchrun": _from_torchrun, "slurm": _from_slurm, "mpi": _from_mpi, "single": _single}
