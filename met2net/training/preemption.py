"""Stop cleanly before being killed: on SIGUSR1/SIGUSR2/SIGTERM, or before ``training.time_limit`` runs out.

A signal only sets a flag. At the next optimizer-step boundary the ranks agree by an all-reduce
(any rank's flag stops every rank), the loop writes a checkpoint, and the process exits with
``REQUEUE_EXIT_CODE``: "stopped on purpose with a checkpoint, requeue me". Launchers map it to
a requeue; a run started again in the same run directory resumes from that checkpoint. SIGUSR1 is
what our sbatch scripts forward before the time limit, SIGUSR2 what submitit's jobs get; SIGTERM comes
with ``scancel``, ``scontrol requeue`` and preemption (the job is ending or requeued anyway).

The flag is all-reduced every step as a host tensor in a gloo group (``collectives.host_group``). Under NCCL it
would sit in device memory, and reading it would wait for every kernel queued before it: a host synchronisation per
step. A gloo all-reduce of 4 bytes waits only for the other ranks' hosts (one network round trip: ~0.5 ms over
loopback on the loaded 2-core development machine, docs/scaling.md), not for any device. Checking every k steps
instead would delay a stop by up to k steps.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, try again
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
_early: list[str] = []


def catch_signals_early() -> None:
    """Record stop signals from the very start of the process (their default action kills it, and start-up
    takes seconds); the StopWatch built later takes them over. Imports nothing heavy, so call it first."""
    for sig in SIGNALS:
        signal.signal(sig, lambda signum, frame: _early.append(signal.Signals(signum).name))


def ignore_late_stop_signals() -> None:
    """The run is over: a time-limit warning that comes now has nothing to stop. Ignored, it cannot kill the process
    either (at exit Python puts back the default action, termination, for signals it had a handler for — a job
    that finished would end FAILED). SIGTERM keeps its meaning: end now."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


class Preempted(Exception):
    """Raised by the loop after the checkpoint is written; the command turns it into the exit code."""


class StopWatch:
    """The flag that signals set, and the time budget."""

    def __init__(self, time_limit_s: float = 0.0, group: Any = None):
        self.requested: str | None = _early[-1] if _early else None
        self.group = group  # where the ranks agree: a gloo group, or None for the default group (gloo on the CPU)
        self.time_limit_s = time_limit_s
        self.started = time.monotonic()
        self.longest_step = 0.0
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name

    def out_of_time(self, step_seconds: float) -> bool:
        """True when two more of the slowest steps (one to run, one to checkpoint in) would pass the limit."""
        self.longest_step = max(self.longest_step, step_seconds)
        if not self.time_limit_s:
            return False
        return time.monotonic() - self.started + 2 * self.longest_step >= self.time_limit_s

    def should_stop(self, step_seconds: float, world_size: int) -> str | None:
        """Why every rank stops now (the same answer on all ranks), or None."""
        reason = self.requested or ("time limit" if self.out_of_time(step_seconds) else None)
        if world_size == 1:
            return reason
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if reason is None else 1 + (self.requested is not None)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return {0: None, 1: "time limit", 2: "signal"}[int(flag)]
