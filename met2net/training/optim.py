"""Optimizer and learning-rate schedule (cosine with linear warm-up, per optimizer step).

The optimizer's kernels: torch's Adam/AdamW update every tensor in a Python loop unless told otherwise on the CPU.
``foreach`` (one call per operation over all tensors) gives the same numbers, bitwise (tests/unit/test_optim.py),
and is used on the CPU; on CUDA the ``fused`` kernel (one launch per step) is used. DeepSpeed takes either as our
client optimizer: under ZeRO 1–3 it steps it on its flat fp32 partitions, which are on the same device. Its own
``FusedAdam`` is not used (a CUDA extension, and one more optimizer to keep bitwise resumes for).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from met2net.config import TrainingConfig


def lr_at(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """LR for optimizer step ``step`` (0-based): linear warm-up to ``base_lr`` over
    ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def optimizer_kernels(device: torch.device | str) -> dict[str, bool]:
    """``fused`` on CUDA, ``foreach`` elsewhere (the CPU has a fused Adam too, with other roundings: not used)."""
    return {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: TrainingConfig, device: torch.device | str = "cpu"
) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params``, with the kernels for the device the step runs on (``optimizer_kernels``)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **optimizer_kernels(device))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, cfg.lr, cfg.min_lr, cfg.warmup_steps, total_steps) / cfg.lr
    )
