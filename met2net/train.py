"""One run of ``met2net train`` in this process: the entry point shared by the command line and by launchers
that run training in-process (submitit). Thin on purpose: build a Trainer, train, tear the process group down."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from met2net.config import Config
from met2net.distributed.orphans import stop_with_launcher
from met2net.training.preemption import REQUEUE_EXIT_CODE, Preempted, catch_signals_early, ignore_late_stop_signals


@dataclass(frozen=True)
class RunResult:
    """How a run ended. ``exit_code`` 0: done; ``REQUEUE_EXIT_CODE``: stopped with a checkpoint, run it again to
    go on. ``stopped_by``: the signal that stopped this process (None for the time limit, another rank's signal,
    or a finished run)."""

    exit_code: int
    run_dir: Path
    schedule: str
    step: int
    world_size: int
    rank: int
    val: dict[str, float] = field(default_factory=dict)
    stopped_by: str | None = None

    @property
    def finished(self) -> bool:
        return self.exit_code == 0


def run_train(cfg: Config) -> RunResult:
    """Train ``cfg``'s schedule to its end, or until a stop signal or the time limit (then a checkpoint is written
    and the result says requeue). The process group is torn down either way."""
    catch_signals_early()  # before the heavy imports: a signal during start-up is not lost
    stop_with_launcher()  # torchrun killed: SIGTERM, a checkpoint, not ranks training on unsupervised
    from met2net.distributed.setup import failure_message, teardown
    from met2net.training import run_lock
    from met2net.training.build import build_trainer

    failed = True
    try:
        trainer = build_trainer(cfg)
        where = dict(
            run_dir=trainer.run_dir, schedule=trainer.schedule.name, world_size=trainer.world_size, rank=trainer.rank
        )
        try:
            val = trainer.train()
        except Preempted as stop:
            print(f"met2net: stopped ({stop}); exit code {REQUEUE_EXIT_CODE} = requeue me", file=sys.stderr)
            result = RunResult(REQUEUE_EXIT_CODE, step=trainer.step, stopped_by=trainer.stopwatch.requested, **where)
        else:
            result = RunResult(0, step=trainer.step, val=val, **where)
        del trainer
        failed = False
    except BaseException as error:  # said by this rank, before the process group goes: which rank failed, and why
        if message := failure_message(error, cfg.distributed.timeout_s):
            print(message, file=sys.stderr, flush=True)
        raise
    finally:
        teardown(failed)  # after a failure no barrier: the others are elsewhere, and would keep this rank waiting
        run_lock.release()
        ignore_late_stop_signals()
    if result.finished and result.rank == 0:
        print(
            f"{result.schedule}: {result.step} steps on {result.world_size} rank(s), validation "
            + ", ".join(f"{k} {v:.5f}" for k, v in result.val.items() if "/" not in k)  # not per variable
            + f"; run directory {result.run_dir}"
        )
    return result
