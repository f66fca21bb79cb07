"""Consolidated weights: one fp32 safetensors file and its ``met2net.json``, from a sharded training checkpoint
(``consolidate``) or from the authors' reference checkpoint (``import_reference``); reading them back needs
safetensors and JSON only (``load_consolidated``). Format: ``docs/checkpoints.md``.

This package never imports the training loop, its builders, the launchers or the command line: the weights of a
checkpoint are read from its files alone. Its names are imported on first use, so that ``met2net consolidate``
loads only what consolidation needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "META": "format",
    "WEIGHTS": "format",
    "ConsolidateError": "format",
    "consolidate": "from_checkpoint",
    "fit_to_model": "load",
    "is_consolidated": "load",
    "load_consolidated": "load",
    "read_meta": "load",
    "verify_consolidated": "load",
    "import_reference": "reference",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
