"""Device binding, process-group set-up and teardown in one place (FACTS.md: DeepSpeed on CPU)."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Mapping
from datetime import timedelta

import torch
import torch.distributed as dist

from met2net.compat.deepspeed_internals import disable_shm_comm_op, point_local_rank_at
from met2net.compat.torch_distributed import abort_process_groups, set_new_group_timeout
from met2net.distributed.devices import DeviceBindingError, DeviceChoice, select_device, visible_devices
from met2net.distributed.env import RankInfo, export
from met2net.errors import UserError


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


DEFAULT_TIMEOUT_S = 300.0  # config.DistributedConfig.timeout_s


class RanksDidNotJoin(UserError):
    """The rendezvous ended without every rank: one failed at start-up or never started (its own log says why), or
    the ranks could not reach the master address. Raised on the ranks that were waiting, after the timeout."""


def init_process_group(
    info: RankInfo,
    choice: DeviceChoice | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    init_method: str | None = None,
) -> DeviceChoice:
    """Bind the device (unless ``choice`` says it is bound), export the rank variables ourselves (so DeepSpeed never
    falls back to its own MPI discovery) and start DeepSpeed's process group: NCCL on GPUs, gloo on the CPU.
    Every collective, in this group and in the groups DeepSpeed creates later, fails after ``timeout_s`` seconds
    of waiting for the other ranks (``distributed.timeout_s``) instead of torch's 10 or 30 minutes. The ranks meet
    at ``info``'s master address and port, or at ``init_method`` (``file:///path``: a file no other job shares, so
    no port can be taken by another process between choosing and binding it — the test harness's choice). Returns
    the device choice."""
    choice = choice or bind_device(info)
    export(info, os.environ)
    cuda = choice.index is not None
    if cuda:
        point_local_rank_at(choice.index, os.environ)  # DeepSpeed's device is cuda:<LOCAL_RANK>
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed

    if not cuda:
        disable_shm_comm_op()
    timeout = timedelta(seconds=timeout_s)
    set_new_group_timeout(timeout)  # DeepSpeed's own groups are created without one (compat/torch_distributed.py)
    try:
        deepspeed.init_distributed(
            dist_backend="nccl" if cuda else "gloo",
            auto_mpi_discovery=False,
            distributed_port=info.master_port,
            rank=info.rank,
            world_size=info.world_size,
            verbose=False,
            timeout=timeout,
            init_method=init_method,
        )
    except (dist.DistStoreError, dist.DistNetworkError) as e:
        where = init_method or f"{info.master_addr}:{info.master_port}"
        raise RanksDidNotJoin(
            f"rank {info.rank} of {info.world_size} on {socket.gethostname()}: the ranks did not all meet at {where} "
            f"within distributed.timeout_s={timeout_s:g} s ({str(e).strip().splitlines()[-1]}). A rank that failed "
            "at start-up or was never started leaves the others waiting: its own log says why; if the ranks only "
            "start slowly, raise distributed.timeout_s"
        ) from None
    return choice


def teardown(failed: bool = False) -> None:
    """Collect the engine's objects, then barrier and destroy the group: without this, multi-rank CPU runs
    sometimes abort at exit ("terminate called without an active exception", 6 of 28 runs in FACTS.md). The
    barrier waits at most the group's timeout. After a failure (``failed``) there is no barrier: the other ranks
    are somewhere else (in a collective this rank will never enter), and waiting for them kept a rank that could
    not load its checkpoint alive for 10 minutes; the groups are aborted and the process exits with its error, which
    ends the other ranks' collectives too (gloo: the connection closes; a launcher: the job ends)."""
    gc.collect()
    if not (dist.is_available() and dist.is_initialized()):
        return
    if failed:
        abort_process_groups()
        return
    dist.barrier()
    dist.destroy_process_group()


def failure_message(error: BaseException, timeout_s: float) -> str | None:
    """The line a failing rank of a multi-rank run prints before it exits: which rank, on which host, and why — with
    what a timeout means. None on one process (the command's own error line says it all)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    text = f"{type(error).__name__}: {error}".strip()
    if len(text) > 2000:
        text = text[:2000] + " …"
    hint = ""
    if "timed out" in text.lower() or "timeout" in text.lower():
        hint = (
            f" — a collective waited distributed.timeout_s={timeout_s:g} s for the other ranks: one of them stopped, "
            "hung or died (its own error, if any, is in its output)"
        )
    elif "connection closed" in text.lower() or "connection reset" in text.lower():
        hint = " — another rank ended (its own error is in its output)"
    return f"met2net: rank {dist.get_rank()} of {dist.get_world_size()} on {socket.gethostname()} failed: {text}{hint}"
