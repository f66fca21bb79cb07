"""Shared fixtures: small Met²Net configurations that run in milliseconds."""

from __future__ import annotations

import signal

import pytest
import torch

from met2net.config import Config, load_config

SMALL = [
    "model.variables=[u10,t2m,r]",
    "model.in_frames=2",
    "model.out_frames=2",
    "model.grid=[8,16]",
    "model.hid_s=4",
    "model.hid_t=16",
    "model.num_translator_blocks=2",
    "model.num_heads=4",
]


def small_config(*overrides: str) -> Config:
    return load_config(None, [*SMALL, *overrides])


@pytest.fixture
def small_cfg() -> Config:
    return small_config()


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """Training in the test's process (``run_train``) installs its stop-signal handlers; pytest gets its own
    back after every test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
