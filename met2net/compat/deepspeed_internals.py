"""DeepSpeed internals met2net relies on (tested with the versions in ``met2net.compat``).

- ZeRO-3 parameters: DeepSpeed replaces ``param.data`` by an empty tensor outside a gather and keeps this rank's
  partition in ``param.ds_tensor`` and the whole size in ``param.ds_numel``; ``deepspeed.zero.GatheredParameters``
  makes parameters whole for the length of a ``with`` block (and, with ``modifier_rank``, partitions what that
  rank wrote on exit). None of these attributes is documented API.
- ``deepspeed.ops.__compatible_ops__``: the table of ops DeepSpeed builds at start-up.
- The universal checkpoint: ``deepspeed.checkpoint.ds_to_universal.main`` (a command-line entry, called with an
  argparse namespace) and the file layout it writes, which ``fit_universal_to_every_stage`` completes.
- ``LOCAL_RANK`` as the CUDA device ordinal (``point_local_rank_at``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from collections.abc import Iterable, MutableMapping
from pathlib import Path

import torch
from torch import nn


def is_zero3(param: nn.Parameter) -> bool:
    """True for a parameter partitioned by ZeRO-3 (it carries ``ds_tensor``)."""
    return hasattr(param, "ds_tensor")


def partition(param: nn.Parameter) -> torch.Tensor:
    """This rank's flat partition of a ZeRO-3 parameter."""
    return param.ds_tensor


def is_whole(param: nn.Parameter) -> bool:
    """A ZeRO-3 parameter whose full data is present now (gathered, or small and persistent) and is not the
    partition itself (which it is on one rank)."""
    return param.data.numel() == param.ds_numel and param.data.data_ptr() != param.ds_tensor.data_ptr()


def whole_numel(param: nn.Parameter) -> int:
    """The parameter's full size, also for a ZeRO-3 parameter whose data is empty on this rank now."""
    return param.ds_numel if is_zero3(param) else param.numel()


def is_gathered(param: nn.Parameter) -> bool:
    return param.data.numel() == param.ds_numel


def gathered(params: Iterable[nn.Parameter], modifier_rank: int | None = None) -> contextlib.AbstractContextManager:
    """The parameters whole inside the block when ZeRO-3 partitions them; a no-op otherwise."""
    params = list(params)
    if not params or not is_zero3(params[0]):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def disable_shm_comm_op() -> None:
    """On the CPU, DeepSpeed JIT-compiles a shared-memory op at start-up that only its *inference* all-reduce
    uses. Every process then takes a file lock in the extensions directory to run ninja, and a process killed
    meanwhile (a signal during start-up, a cancelled job) leaves the lock behind: every later run hangs.
    Training all-reduces through torch.distributed (gloo), so the op is turned off. Relies on DeepSpeed reading
    ``deepspeed.ops.__compatible_ops__`` to decide which ops to build."""
    import deepspeed.ops

    compatible = dict(deepspeed.ops.__compatible_ops__)
    compatible["deepspeed_shm_comm"] = False
    deepspeed.ops.__compatible_ops__ = compatible


def point_local_rank_at(ordinal: int, env: MutableMapping[str, str]) -> None:
    """Make DeepSpeed use CUDA device ``ordinal``: it reads ``LOCAL_RANK`` as the device ordinal, not as a rank
    (``deepspeed.comm.get_local_rank``: "local rank (= GPU device ID)"; the engine's ``set_device``, the process
    group's ``device_id``, ZeRO-3's ``zero.Init`` and ``zero/utils.py`` all build ``cuda:<LOCAL_RANK>``). With one
    GPU per task that is 0 on every task, so ``LOCAL_RANK`` is set to the ordinal here; the engine then asserts
    ``LOCAL_RANK == OMPI_COMM_WORLD_LOCAL_RANK`` under Open MPI, so that one follows. No-op when they agree
    already (every GPU of the node visible: ordinal = local rank). Nothing else in a training process reads these
    after rank discovery; met2net keeps the true local rank in ``RankInfo``."""
    env["LOCAL_RANK"] = str(ordinal)
    if "OMPI_COMM_WORLD_LOCAL_RANK" in env:
        env["OMPI_COMM_WORLD_LOCAL_RANK"] = str(ordinal)


def ds_to_universal(ckpt: Path, out: Path) -> None:
    """DeepSpeed's universal conversion of checkpoint directory ``ckpt`` into ``out`` (its command-line entry, with
    the namespace its argument parser would build). Its progress output is kept for the error message only."""
    from deepspeed.checkpoint.ds_to_universal import main

    args = argparse.Namespace(
        input_folder=str(ckpt),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            main(args)
    except Exception as e:
        raise RuntimeError(
            f"{ckpt}: DeepSpeed's universal conversion failed ({e!r}); its output:\n{log.getvalue()[-3000:]}"
        ) from e


_ENGINE_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")  # ZeRO-1/2, ZeRO-3


def fit_universal_to_every_stage(out: Path) -> None:
    """Make a universal checkpoint written from ZeRO-1/2 loadable by ZeRO-3 and the other way round: DeepSpeed's
    per-parameter files are the same, but the two optimizers look for the engine-state file (LR schedule, step,
    client state; the weights come from ``zero/``) under their own names and for the Adam step in different places
    (ZeRO-1/2: ``zero/<param>/step.pt``, ZeRO-3: ``zero/optimizer_state.pt``), and ZeRO-3 writes flat tensors where
    ZeRO-1/2 read shaped ones. Writes what is missing of either. Relies on the file names above, the keys
    ``optimizer_state_dict``, ``param_groups``, ``ds_version``, ``param_shapes`` and the ``{"param", "cat_dim"}``
    per-parameter format."""
    have = [n for n in _ENGINE_STATES if (out / n).exists()]
    for name in _ENGINE_STATES:
        if have and name not in have:
            os.link(out / have[0], out / name)
    zero = out / "zero"
    # DeepSpeed's own files, written by this run's DeepSpeed: the optimizer state names DeepSpeed objects (LossScaler,
    # ZeroStageEnum), so it loads as DeepSpeed itself loads its checkpoints (TorchCheckpointEngine: weights_only=False)
    global_state = torch.load(zero / "optimizer_state.pt", map_location="cpu", weights_only=False)
    step_files = sorted(zero.glob("*/step.pt"))
    if "optimizer_state_dict" not in global_state:  # from ZeRO-1/2
        step = torch.load(step_files[0], map_location="cpu", weights_only=True) if step_files else None
        global_state["optimizer_state_dict"] = {
            "state": {0: {"step": step}} if step is not None else {},
            "param_groups": global_state["param_groups"],
        }
    else:  # from ZeRO-3: flat tensors per parameter, no ds_version
        engine_state = torch.load(out / have[0], map_location="cpu", weights_only=False)  # DeepSpeed's engine state
        global_state.setdefault("ds_version", engine_state["ds_version"])
        shapes = {n: shape for group in engine_state["param_shapes"] for n, shape in group.items()}
        state = global_state["optimizer_state_dict"].get("state")
        for param_dir in (p for p in zero.iterdir() if p.is_dir()):
            for f in param_dir.glob("*.pt"):
                value = torch.load(f, map_location="cpu", weights_only=True)  # a tensor per file
                if f.name != "step.pt" and torch.is_tensor(value):
                    torch.save({"param": value.view(shapes[param_dir.name]), "cat_dim": 0}, f)
            if not step_files and state:
                torch.save(state[0]["step"], param_dir / "step.pt")
    torch.save(global_state, zero / "optimizer_state.pt")
