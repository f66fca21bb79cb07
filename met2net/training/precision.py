"""Mixed precision: bf16 is ``torch.autocast`` around the forward only; weights, gradients, optimizer state and
the momentum copies stay fp32 (why fp16 is refused: docs/architecture.md)."""

from __future__ import annotations

import contextlib

import torch


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
