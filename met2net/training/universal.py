"""Resume at another world size: DeepSpeed's universal checkpoint, plus what it leaves out.

A ZeRO 1/2/3 checkpoint partitions the optimizer state (and, under ZeRO-3, the weights) by rank, so it loads only
at the world size that wrote it. DeepSpeed's ``ds_to_universal`` rewrites it per parameter (fp32 weights, Adam
moments, step); an engine built with ``checkpoint.load_universal: true`` loads that at any world size. It restores
the trained parameters, optimizer, LR schedule and client state, but not the module's other state — frozen
parameters (our momentum copies) and buffers (BatchNorm statistics) — which ``restore_untrained`` copies from the
checkpoint's gathered ``model.pt``. The sampler position maps to the new world size (``data.sampler.remap_state``);
per-rank RNG states cannot, so ``rng.derived_seed`` gives fresh ones from (seed, step, rank). Such a resume is exact in
weights, optimizer, LR schedule and step, not bitwise in the losses that follow (other RNG streams, and BatchNorm
normalises over other micro-batches).

The plain-PyTorch engine (one process, ZeRO 0, no accumulation) writes its own format: moving between it and
DeepSpeed is refused with what to do instead; between ZeRO stages 1, 2 and 3 the universal form carries it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from met2net.compat.deepspeed_internals import ds_to_universal, fit_universal_to_every_stage, gathered
from met2net.training.layout import CheckpointError

UNIVERSAL = "universal"  # <checkpoint>/universal: DeepSpeed's universal form of that checkpoint, made on demand


def written_by(ckpt: Path, meta: dict[str, Any]) -> tuple[str, int]:
    """(engine, ZeRO stage) of the run that wrote ``ckpt``: ("local", 0) or ("deepspeed", stage)."""
    if "engine" in meta:
        return meta["engine"], int(meta.get("zero_stage", 0))
    if (Path(ckpt) / "engine.pt").exists():
        return "local", 0
    return "deepspeed", int(meta.get("config", {}).get("deepspeed", {}).get("zero_stage", 0))


def _describe(engine: str, stage: int, world_size: int) -> str:
    what = "the plain-PyTorch engine" if engine == "local" else f"DeepSpeed ZeRO-{stage}"
    return f"{what} on {world_size} rank(s)"


def _how_to_resume(engine: str, stage: int) -> str:
    if engine == "local":
        return (
            "resume it on one process with deepspeed.zero_stage=0 and deepspeed.gradient_accumulation=1 "
            "(the engine that wrote it)"
        )
    if stage > 0:
        return "resume with deepspeed.zero_stage=1, 2 or 3 (DeepSpeed, on any number of ranks, one included)"
    return (
        "resume on DeepSpeed with deepspeed.zero_stage=0 (2 or more ranks, or deepspeed.gradient_accumulation "
        "above 1 on one)"
    )


def resume_mode(ckpt: Path, meta: dict[str, Any], world_size: int, engine: str, zero_stage: int) -> str:
    """How this run (``engine`` "local"/"deepspeed", ``zero_stage``, ``world_size``) can resume ``ckpt``:
    ``"same"`` (the engine loads it as written) or ``"universal"`` (DeepSpeed's conversion first). Raises
    ValueError, naming the checkpoint, both set-ups and what to do, when it cannot."""
    saved_engine, saved_stage = written_by(ckpt, meta)
    saved_world = int(meta.get("world_size", 1))
    stage = zero_stage if engine == "deepspeed" else 0
    if engine == saved_engine == "deepspeed" and saved_stage > 0 and stage > 0 and saved_stage != stage:
        return "universal"  # per-parameter state: loads into any ZeRO 1/2/3 partitioning
    if (saved_engine, saved_stage) != (engine, stage):
        raise CheckpointError(
            f"{ckpt}: written by {_describe(saved_engine, saved_stage, saved_world)}; this run uses "
            f"{_describe(engine, zero_stage, world_size)}. Its engine state cannot move between the plain-PyTorch "
            f"engine and DeepSpeed, nor between ZeRO-0 and ZeRO 1/2/3: {_how_to_resume(saved_engine, saved_stage)}; "
            f"or start a new run from its weights only (training.init_from={ckpt}, another run.dir; fresh optimizer)."
        )
    if saved_world == world_size or engine == "local" or zero_stage == 0:
        return "same"  # ZeRO-0 keeps whole optimizer state, the same at every world size
    return "universal"


def convert(ckpt: Path) -> Path:
    """``ckpt``'s DeepSpeed files in universal form, in ``ckpt/universal`` (one process calls this; the others
    wait). Made once: written into a temporary directory and renamed into place, so a directory that exists is
    complete and is reused."""
    ckpt = Path(ckpt)
    out = ckpt / UNIVERSAL
    if out.is_dir():
        return out
    work = ckpt / f".{UNIVERSAL}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    ds_to_universal(ckpt, work / UNIVERSAL)
    fit_universal_to_every_stage(work / UNIVERSAL)
    os.replace(work / UNIVERSAL, out)
    shutil.rmtree(work)  # also its `latest_universal`, which names the temporary directory
    return out


@torch.no_grad()
def restore_untrained(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the frozen parameters (momentum copies) and buffers (BatchNorm statistics) of ``module`` from a whole
    state dict — what loading a universal checkpoint leaves at their initial values. Under ZeRO-3 the partitioned
    frozen parameters are written whole inside ``GatheredParameters`` with ``modifier_rank=0``, which partitions
    them again on exit. Returns the names restored."""
    frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    buffers = list(module.named_buffers())
    missing = [n for n, _ in frozen + buffers if n not in state]
    if missing:
        raise KeyError(f"model.pt lacks {len(missing)} entries of this model, e.g. {missing[:3]}")
    with gathered([p for _, p in frozen], modifier_rank=0):
        for n, p in frozen:
            p.data.copy_(state[n])
    for n, b in buffers:
        b.copy_(state[n])
    return [n for n, _ in frozen + buffers]
