"""Engines: what the train loop needs from whatever runs backward and the optimizer, and the two that provide it.

``Engine`` is the interface the loop is typed against; DeepSpeed's engine satisfies it as it is, ``LocalEngine``
gives one process the same calls in plain PyTorch (no DeepSpeed start-up, channels-last weights).

The DeepSpeed configuration is derived from our config and the world size — never hand-written.
``training.batch_size`` is the number of samples per optimizer step on all ranks together (the paper's batch 16),
so one config gives the same optimisation on any number of ranks:
``train_batch_size = micro-batch × gradient accumulation × data-parallel ranks``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from met2net.compat import load_data
from met2net.config import Config, ConfigError


@runtime_checkable
class Engine(Protocol):
    """Backward, optimizer and LR-scheduler steps, and the engine's own checkpoint files — the calls of a
    DeepSpeed engine that the loop and the checkpoint manager make."""

    module: torch.nn.Module

    def backward(self, loss: torch.Tensor) -> Any: ...

    def is_gradient_accumulation_boundary(self) -> bool: ...

    def step(self) -> Any: ...

    def get_lr(self) -> list[float]: ...

    def save_checkpoint(
        self, save_dir: str | Path, tag: str, client_state: dict[str, Any], save_latest: bool = ...
    ) -> Any: ...

    def load_checkpoint(self, load_dir: str | Path, tag: str) -> tuple[Any, dict[str, Any]]: ...

    def load_universal_checkpoint(self) -> bool: ...


class LocalEngine:
    """Single-process engine: plain PyTorch with the calls of a DeepSpeed engine."""

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
        grad_clip: float,
    ):
        self.module, self.optimizer, self.lr_scheduler = module, optimizer, lr_scheduler
        self.grad_clip = grad_clip
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def is_gradient_accumulation_boundary(self) -> bool:
        return True

    def step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def save_checkpoint(
        self, save_dir: str | Path, tag: str, client_state: dict[str, Any], save_latest: bool = False
    ) -> None:
        torch.save(
            {
                "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "client_state": client_state,
            },
            Path(save_dir) / tag / LOCAL_STATE,
        )

    def load_checkpoint(self, load_dir: str | Path, tag: str) -> tuple[Path, dict[str, Any]]:
        path = Path(load_dir) / tag / LOCAL_STATE
        state = load_data(path, map_location="cpu")  # tensors, numbers, lists: data only
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        return path, state["client_state"]

    def load_universal_checkpoint(self) -> bool:
        return False  # its own format only: the checkpoint manager refuses other engines' checkpoints first


LOCAL_STATE = "engine.pt"  # LocalEngine's file in a checkpoint directory


def engine_kind(engine: Engine) -> str:
    """ "local" or "deepspeed": what checkpoints record, so a resume can tell whether it can load them."""
    return "local" if isinstance(engine, LocalEngine) else "deepspeed"


def uses_deepspeed(cfg: Config, world_size: int) -> bool:
    """One process without ZeRO or accumulation runs on the plain-PyTorch engine; anything else on DeepSpeed."""
    return world_size > 1 or cfg.deepspeed.zero_stage > 0 or cfg.deepspeed.gradient_accumulation > 1


def micro_batch_size(cfg: Config, world_size: int) -> int:
    per_micro = cfg.deepspeed.gradient_accumulation * world_size
    if world_size < 1 or cfg.training.batch_size % per_micro:
        raise ConfigError(
            f"'training.batch_size' {cfg.training.batch_size} is not divisible by deepspeed.gradient_accumulation "
            f"({cfg.deepspeed.gradient_accumulation}) × ranks ({world_size}) = {per_micro}; "
            f"use a multiple of {per_micro} or change the accumulation"
        )
    return cfg.training.batch_size // per_micro


def deepspeed_config(cfg: Config, world_size: int, load_universal: bool = False) -> dict[str, Any]:
    """DeepSpeed's JSON for ``world_size`` data-parallel ranks. The optimizer and LR schedule are ours
    (passed to ``deepspeed.initialize`` as client objects), so they are not in it. ``load_universal``: the
    engine will load a universal checkpoint (resume at another world size; DeepSpeed reads it only then)."""
    ds, t = cfg.deepspeed, cfg.training
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.stage3_param_persistence_threshold
    if ds.zero_stage in (1, 2) and t.grad_clip == 0:
        # without clipping, ZeRO 1/2 compute the global gradient norm only to skip steps with a non-finite gradient,
        # reading it on the host every step (a wait for the device on GPUs) after one more all-reduce: off, a
        # non-finite gradient is applied, as by the plain engine, ZeRO 0 and torch's own optimizers. ZeRO-3 reads
        # it whatever the config says (docs/performance.md).
        zero["compute_grad_norm"] = False
    conf = {
        "train_batch_size": t.batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size(cfg, world_size),
        "gradient_accumulation_steps": ds.gradient_accumulation,
        "gradient_clipping": t.grad_clip,  # DeepSpeed's default would be 1.0; 0 turns clipping off
        "zero_optimization": zero,
        # bf16 is torch.autocast around our forward: weights, gradients, optimizer state and the momentum
        # copies stay fp32 (DeepSpeed's bf16 mode would store the copies in bf16, where an EMA step of
        # (1 - m)·(q - k) is mostly below half an ulp of k and rounds away)
        "bf16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # our client torch.optim.Adam/AdamW
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if load_universal:
        conf["checkpoint"] = {"load_universal": True}
    return conf


def build_deepspeed_engine(
    cfg: Config,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    world_size: int,
    load_universal: bool = False,
) -> Engine:
    """DeepSpeed wraps the whole Met²Net module (trained and momentum copies) with our optimizer and LR
    schedule; the engine answers the loop's calls (backward, step, get_lr, ...)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        config=deepspeed_config(cfg, world_size, load_universal),
    )
    return engine


def write_deepspeed_config(run_dir: Path, config: dict[str, Any]) -> Path:
    path = Path(run_dir) / "deepspeed.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
