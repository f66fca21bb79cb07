"""One point of a scaling sweep, on this job's ranks: ``met2net scale point POINT.json`` (torchrun, srun, mpirun) or
``run_point`` in-process (the Slurm executor's submitit job).

It builds the Trainer ``met2net train`` builds from the same config, wraps the trainer's loader, its schedule's
forward, its engine's backward and step and the optimizer's own step from outside (the loop is not touched), and
trains the point's warm-up + timed steps with the loop as it is. Rank 0 then writes every rank's measurements to the
``result`` file the point's spec names: the step-time split (``timing.py``), peak memory and the bytes each rank holds
(``footprint.py``), and rank 0's first losses.

``met2net train``'s ``run_train`` builds and trains in one call; a point needs the trainer between the two, so it
repeats run_train's frame (signals, build, train, teardown) around its own middle.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch

from met2net.config import load_config
from met2net.scaling.footprint import footprint, innermost_optimizer, peak_memory_mib, trainable_count
from met2net.scaling.timing import CommTimer, StepClock, summarize


class Probe:
    """The wrappers around one trainer and what they recorded."""

    def __init__(self, trainer: Any, clock: StepClock, warmup: int, timed: int, num_losses: int) -> None:
        self.trainer, self.clock = trainer, clock
        self.warmup, self.timed, self.num_losses = warmup, timed, num_losses
        self.losses: list[tuple[int, torch.Tensor]] = []  # (optimizer step, micro-step loss) of the first steps
        self.bytes: dict[str, int] = {}
        self.memory: dict[str, float] = {}
        # collective calls by op at the first timed step's start and at the last one's end
        self._timed_from: dict[str, int] = {}
        self._timed_to: dict[str, int] = {}
        self._wrap_loader()
        self._wrap_forward()
        self._wrap_engine()
        self._wrap_optimizer()

    def _calls_by_op(self) -> dict[str, int]:
        """The collective calls by op so far (a copy: the timer keeps counting)."""
        return dict(self.clock.comm.calls_by_op) if self.clock.comm is not None else {}

    def _wrap_loader(self) -> None:
        self.trainer.train_loader = TimedLoader(self.trainer.train_loader, self.clock)

    def _wrap_forward(self) -> None:
        schedule = self.trainer.schedule
        forward = schedule.forward

        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            with self.clock.phase("forward"):
                out = forward(*args, **kwargs)
            if len(self.clock.steps) < self.num_losses:
                self.losses.append((len(self.clock.steps), out.loss.detach()))
            return out

        schedule.forward = timed_forward

    def _wrap_engine(self) -> None:
        engine = self.trainer.engine
        backward, step = engine.backward, engine.step

        def timed_backward(*args: Any, **kwargs: Any) -> Any:
            with self.clock.phase("backward"):
                return backward(*args, **kwargs)

        def timed_step(*args: Any, **kwargs: Any) -> Any:
            boundary = engine.is_gradient_accumulation_boundary()  # DeepSpeed counts the micro-step in step()
            with self.clock.phase("optimizer"):
                result = step(*args, **kwargs)
            if boundary:
                self.clock.end_step()
                if len(self.clock.steps) == self.warmup:
                    self._timed_from = self._calls_by_op()
                if len(self.clock.steps) == self.warmup + self.timed:
                    self.memory = peak_memory_mib(self.trainer.device)
                    self._timed_to = self._calls_by_op()
            return result

        engine.backward, engine.step = timed_backward, timed_step

    def _wrap_optimizer(self) -> None:
        optimizer = innermost_optimizer(self.trainer.engine.optimizer)
        step = optimizer.step

        @functools.wraps(step)  # keeps the LR scheduler's mark on it (it warns about a replaced step otherwise)
        def measured_step(*args: Any, **kwargs: Any) -> Any:
            result = step(*args, **kwargs)
            if not self.bytes and len(self.clock.steps) >= self.warmup:  # the first timed step: state exists
                self.bytes = footprint(self.trainer.model, optimizer)
            return result

        optimizer.step = measured_step

    def first_losses(self) -> list[float]:
        """Per optimizer step, the mean of its micro-steps' losses (this rank's data)."""
        by_step: dict[int, list[float]] = {}
        for step, loss in self.losses:
            by_step.setdefault(step, []).append(float(loss))
        return [sum(v) / len(v) for _, v in sorted(by_step.items())]

    def measurements(self) -> dict[str, Any]:
        t = self.trainer
        return {
            "rank": t.rank,
            "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),  # Slurm's node name, if any
            "device": str(t.device),
            **summarize(self.clock.steps, self.warmup, self.timed),
            **self.memory,
            **self.bytes,
            "comm_calls": self.clock.comm.calls if self.clock.comm is not None else 0,
            "comm_calls_by_op_per_step": {  # the timed steps' calls by collective: what ring_passes_per_step counts
                op: (n - self._timed_from.get(op, 0)) / self.timed for op, n in self._timed_to.items()
            },
        }


class TimedLoader:
    """The training loader with every batch's wait timed as the ``data`` phase."""

    def __init__(self, loader: Any, clock: StepClock) -> None:
        self.loader, self.clock = loader, clock

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        with self.clock.phase("data"):
            batches = iter(self.loader)  # workers starting count as waiting for data
        while True:
            with self.clock.phase("data"):
                try:
                    batch = next(batches)
                except StopIteration:
                    return
            yield batch


def run_point(spec_path: str | Path) -> dict[str, Any] | None:
    """Train the point in ``spec_path`` (written by the sweep) on this job's ranks; rank 0 writes and returns the
    result (None on the other ranks)."""
    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(spec["config"], spec["overrides"])
    from met2net.distributed.collectives import gather_to_all
    from met2net.distributed.orphans import stop_with_launcher
    from met2net.training.preemption import catch_signals_early, ignore_late_stop_signals

    catch_signals_early()
    stop_with_launcher()
    comm = CommTimer().install() if spec["time_communication"] else None  # before DeepSpeed's backend starts
    from met2net.distributed.setup import failure_message, teardown
    from met2net.training import run_lock
    from met2net.training.build import build_trainer
    from met2net.training.engine import engine_kind
    from met2net.training.startup import versions

    failed, result = True, None
    try:
        trainer = build_trainer(cfg)
        probe = Probe(trainer, StepClock(comm), spec["warmup_steps"], spec["timed_steps"], spec["num_losses"])
        probe.clock.start()
        trainer.train()
        ranks = gather_to_all(probe.measurements(), trainer.world_size)
        if trainer.rank == 0:
            result = {
                "ranks": ranks,
                "first_losses": probe.first_losses(),
                "engine": engine_kind(trainer.engine),
                "world_size": trainer.world_size,
                "trainable_parameters": trainable_count(trainer.model),
                "versions": versions(trainer.device.type == "cuda"),
            }
            write_result(Path(spec["result"]), result)
        del trainer, probe
        failed = False
    except BaseException as error:
        if message := failure_message(error, cfg.distributed.timeout_s):
            print(message, file=sys.stderr, flush=True)
        raise
    finally:
        teardown(failed)
        run_lock.release()
        ignore_late_stop_signals()
        if comm is not None:
            comm.uninstall()
    return result


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Atomically: a result file that exists is whole (the sweep reads it as the point's success)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
