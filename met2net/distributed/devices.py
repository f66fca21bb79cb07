"""Which GPU this rank trains on, as a pure function of what the process sees (no torch, no CUDA call).

``cuda:<local rank>`` is right only when every task sees every GPU of its node. Sites that bind one GPU per task
(``--gpus-per-task=1``, ``--gpu-bind=single:1`` or ``closest``, a prolog that sets ``CUDA_VISIBLE_DEVICES`` per task,
MPI launchers that bind devices) show each task one device, index 0, and local rank 3 asking for ``cuda:3`` fails
with "invalid device ordinal". So the choice depends on the number of visible devices:

- none: the CPU;
- one: ``cuda:0``, whatever the local rank (one GPU per task);
- as many as ranks on the node: ``cuda:<local rank>`` (every task sees every GPU of its node);
- several, and this rank is alone on its node: ``cuda:0``, with a note that the others stay idle;
- anything else: ``DeviceBindingError`` naming the variables that made the layout and the flags that fix it.

Like rank discovery (``env.py``), this is unit-tested with fake environments for every layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from met2net.errors import UserError

Layout = Literal["cpu", "task", "node", "lone-rank"]  # task and node as slurm/job.sh's GPU_LAYOUT names them

BINDING_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_PER_TASK")
"""The variables that say which GPUs a task sees and why: the report records them, errors quote them."""

LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")
"""Where a local rank comes from, in ``env.discover``'s order (torchrun's wins over Slurm's, Slurm's over MPI's)."""


class DeviceBindingError(UserError):
    """The GPUs this task sees fit no layout met2net can map ranks onto; the message says what to change. A
    ``ValueError``, so ``met2net train`` reports it as an error of the launch, not as a crash."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device of one rank: ``index`` is the CUDA ordinal among the devices this process sees (None on the
    CPU); ``layout`` the case of the module docstring that applied; ``note`` a warning for the report, or ''."""

    kind: Literal["cpu", "cuda"]
    index: int | None
    layout: Layout
    note: str = ""

    @property
    def name(self) -> str:
        """``cpu`` or ``cuda:<index>``, as ``torch.device`` takes it."""
        return "cpu" if self.index is None else f"{self.kind}:{self.index}"


def select_device(num_visible: int, local_rank: int, local_world_size: int, env: Mapping[str, str]) -> DeviceChoice:
    """The device of the rank with ``local_rank`` of ``local_world_size`` ranks on its node, given that the process
    sees ``num_visible`` CUDA devices (``torch.cuda.device_count()``, 0 without CUDA). ``env`` only feeds the
    error message, which quotes the variables that made the layout."""
    if num_visible < 0 or not 0 <= local_rank < local_world_size:
        raise ValueError(
            f"select_device({num_visible}, {local_rank}, {local_world_size}): expected a visible count ≥ 0 and "
            "0 ≤ local rank < local world size"
        )
    if num_visible == 0:
        return DeviceChoice("cpu", None, "cpu")
    if num_visible == 1:
        return DeviceChoice("cuda", 0, "task")
    if num_visible == local_world_size:
        return DeviceChoice("cuda", local_rank, "node")
    if local_world_size == 1:
        return DeviceChoice(
            "cuda",
            0,
            "lone-rank",
            f"{num_visible} GPUs visible and one rank on this node: cuda:0 trains, the other {num_visible - 1} stay "
            f"idle (start one rank per GPU to use them: --ntasks-per-node={num_visible})",
        )
    raise DeviceBindingError(binding_error(num_visible, local_rank, local_world_size, env))


def binding_error(num_visible: int, local_rank: int, local_world_size: int, env: Mapping[str, str]) -> str:
    """Why ``num_visible`` GPUs cannot serve ``local_world_size`` ranks, the variables behind it, and both fixes."""
    rank_var = next((name for name in LOCAL_RANK_VARS if name in env), "no local rank variable")
    seen = "; ".join(f"{name}={env[name]}" for name in BINDING_VARS if name in env) or "no " + "/".join(
        BINDING_VARS[:3]
    )
    n = local_world_size
    return (
        f"this task sees {num_visible} GPUs ({seen}) but its node runs {n} ranks (local rank {local_rank}, from "
        f"{rank_var}): neither one GPU per task (cuda:0) nor every GPU of the node per task (cuda:<local rank>) "
        f"applies, and cuda:{local_rank} would pick a GPU another rank may use or that does not exist. Either give "
        f"each task exactly one GPU (Slurm: --gpus-per-task=1, or --gpus-per-node={n} with --gpu-bind=single:1; "
        "MPI: bind one device per rank), or let every task see all of its node's GPUs with one rank per GPU "
        f"(--ntasks-per-node={n} --gpus-per-node={n} and no --gpu-bind; torchrun: CUDA_VISIBLE_DEVICES listing {n} "
        "GPUs). docs/cluster.md, 'GPU layouts', has the sbatch lines of both."
    )


def visible_devices(env: Mapping[str, str]) -> str:
    """What the task was told it may see, for the report: ``CUDA_VISIBLE_DEVICES`` or, when unset, 'all'."""
    return env.get("CUDA_VISIBLE_DEVICES", "all")


def duplicate_gpus(ranks: list[dict]) -> str | None:
    """Ranks on one host that share a physical GPU (same ``uuid``), as one line per GPU, or None. Each task can only
    see its own devices, so this needs every rank's record (``rank``, ``host``, ``uuid``; a None uuid, the CPU,
    never collides): a site that gives every task the same single GPU passes ``select_device`` on every rank."""
    users: dict[tuple[str, str], list[int]] = {}
    for record in ranks:
        if record.get("uuid"):
            users.setdefault((record["host"], record["uuid"]), []).append(record["rank"])
    shared = [
        f"ranks {', '.join(map(str, sorted(r)))} share GPU {uuid} on {host}"
        for (host, uuid), r in users.items()
        if len(r) > 1
    ]
    return "; ".join(shared) or None
