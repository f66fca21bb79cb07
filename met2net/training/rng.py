"""Random-number state: seeding at start-up, per-rank state saved with checkpoints, fresh seeds on resume.

A checkpoint saves every rank's Python, NumPy and torch generator states, so a resume at the same world size
draws the same numbers (DropPath masks) as the run that did not stop. At another world size the saved states
do not fit the new ranks, and ``derived_seed`` gives each rank a fresh, deterministic one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def derived_seed(seed: int, step: int, rank: int) -> int:
    """A seed for rank ``rank`` resuming at ``step`` when the saved per-rank RNG states do not fit the new world
    size: deterministic, and different for every (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
