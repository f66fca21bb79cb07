"""Where a training step's time goes, measured in the training process: data wait, forward, backward, optimizer step,
communication and the rest (docs/scaling.md, "What a point measures").

``point.py`` wraps a built Trainer's loader, forward, backward and engine step from outside; each wrapper times its
call as a ``StepClock`` phase. ``CommTimer`` times torch.distributed's collectives, which every DeepSpeed collective
ends in (DeepSpeed's torch backend calls them through the ``torch.distributed`` module's attributes, and keeps two of
them from the moment it starts: so the timer is installed before the process group forms). Communication inside a
phase is taken out of it, so the split adds up to the step's wall time:

    wall = data + forward + backward + optimizer + comm + other

``other`` is what no wrapper covers: the loop's own work between steps (logging, the stop check's collective is
comm), host-to-device copies, Python. Each collective is made blocking (an asynchronous one is waited for at once,
and on a GPU the device is synchronised around it, as DeepSpeed's own communication logger does): communication that
would overlap with computation is then counted in full, and the step time is the one without that overlap.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

PHASES = ("data", "forward", "backward", "optimizer")
SPLIT = (*PHASES, "comm", "other")  # the columns of the step-time split, in stacking order

# every torch.distributed collective DeepSpeed's torch backend or met2net calls; the ones a torch lacks are skipped
COLLECTIVES = (
    "all_reduce",
    "all_reduce_coalesced",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "_reduce_scatter_base",
    "all_gather",
    "all_gather_into_tensor",
    "_all_gather_base",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "gather",
    "scatter",
    "send",
    "recv",
)
# ring passes per call (docs/scaling.md, "Calibration"): an all-reduce is a reduce-scatter then an all-gather; every
# other collective is counted as one pass (broadcast, barrier and the point-to-point calls included: an approximation)
TWO_PASSES = frozenset({"all_reduce", "all_reduce_coalesced"})


def synchronize() -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a host clock brackets the work itself."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class CommTimer:
    """Seconds spent in torch.distributed collectives since ``install`` (this process, all threads), the calls and
    their ring passes (``TWO_PASSES``: the latency count of the calibrated model). A collective called from inside
    another (``all_gather_object`` → ``all_gather``) counts once."""

    def __init__(self, sync: Callable[[], None] = synchronize) -> None:
        self.seconds, self.calls, self.passes = 0.0, 0, 0
        self.calls_by_op: dict[str, int] = {}  # the point's result.json keeps it: where the passes come from
        self._sync = sync
        self._saved: dict[str, Callable[..., Any]] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def install(self, module: Any = torch.distributed) -> CommTimer:
        for name in COLLECTIVES:
            fn = getattr(module, name, None)
            if fn is not None and name not in self._saved:
                self._saved[name] = fn
                setattr(module, name, self._wrap(fn, name))
        self._module = module
        return self

    def uninstall(self) -> None:
        for name, fn in self._saved.items():
            setattr(self._module, name, fn)
        self._saved.clear()

    def _wrap(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        passes = 2 if name in TWO_PASSES else 1

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "depth", 0):
                return fn(*args, **kwargs)
            self._local.depth = 1
            self._sync()
            tic = time.perf_counter()
            try:
                work = fn(*args, **kwargs)
                if hasattr(work, "wait"):  # async_op=True: wait now, so the time is the collective's
                    work.wait()
                self._sync()
                return work
            finally:
                elapsed = time.perf_counter() - tic
                self._local.depth = 0
                with self._lock:
                    self.seconds += elapsed
                    self.calls += 1
                    self.passes += passes
                    self.calls_by_op[name] = self.calls_by_op.get(name, 0) + 1

        return timed


@dataclass(frozen=True)
class StepTimes:
    """One optimizer step (all its micro-steps), seconds; each phase without the communication inside it."""

    wall: float
    data: float
    forward: float
    backward: float
    optimizer: float
    comm: float
    passes: int = 0  # ring passes of the collectives in the step (``CommTimer``)

    @property
    def other(self) -> float:
        return self.wall - self.data - self.forward - self.backward - self.optimizer - self.comm


class StepClock:
    """Collects phases into optimizer steps. ``start()`` marks the loop's start; ``end_step()`` closes a step at its
    optimizer step's end, so a step's wall time runs from the previous step's end (the first: from ``start``)."""

    def __init__(self, comm: CommTimer | None = None, sync: Callable[[], None] = synchronize) -> None:
        self.comm, self._sync = comm, sync
        self.steps: list[StepTimes] = []
        self._phases = dict.fromkeys(PHASES, 0.0)
        self._since: float | None = None
        self._comm_since = 0.0
        self._passes_since = 0

    def _comm_now(self) -> float:
        return self.comm.seconds if self.comm is not None else 0.0

    def _passes_now(self) -> int:
        return self.comm.passes if self.comm is not None else 0

    def start(self) -> None:
        self._sync()
        self._since, self._comm_since = time.perf_counter(), self._comm_now()
        self._passes_since = self._passes_now()
        self._phases = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        tic, comm0 = time.perf_counter(), self._comm_now()
        try:
            yield
        finally:
            self._sync()
            self._phases[name] += (time.perf_counter() - tic) - (self._comm_now() - comm0)

    def end_step(self) -> StepTimes:
        now, comm, passes = time.perf_counter(), self._comm_now(), self._passes_now()
        since = self._since if self._since is not None else now
        step = StepTimes(
            wall=now - since, comm=comm - self._comm_since, passes=passes - self._passes_since, **self._phases
        )
        self.steps.append(step)
        self._since, self._comm_since, self._passes_since = now, comm, passes
        self._phases = dict.fromkeys(PHASES, 0.0)
        return step


def summarize(steps: Sequence[StepTimes], warmup: int, timed: int) -> dict[str, float]:
    """The timed steps (after ``warmup``) of one rank: their total wall time ``wall_s``, the mean seconds per step of
    the wall time (``step_s``) and of every part of the split (``<part>_s``), and the mean ring passes per step."""
    window = list(steps[warmup : warmup + timed])
    if len(window) < timed:
        raise ValueError(f"{len(steps)} steps recorded; the warm-up ({warmup}) and timed ({timed}) steps need more")
    wall = sum(s.wall for s in window)
    out = {"wall_s": wall, "step_s": wall / timed}
    for part in SPLIT:
        out[f"{part}_s"] = sum(getattr(s, part) for s in window) / timed
    out["ring_passes_per_step"] = sum(s.passes for s in window) / timed
    return out


def mean_over_ranks(summaries: Sequence[dict[str, float]]) -> dict[str, float]:
    """Every key's mean over the ranks: the split of a step as the ranks saw it on average (a rank that waits for a
    slower one in a collective shows the wait as comm)."""
    return {k: sum(s[k] for s in summaries) / len(summaries) for k in summaries[0]}


STEP_FIELDS = tuple(f.name for f in fields(StepTimes))
