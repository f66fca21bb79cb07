"""The train loop: data → step → validate → checkpoint → stop check, and nothing else.

The Trainer drives an ``Engine`` (backward, optimizer and LR steps: ``training/engine.py``), a ``Schedule`` (what
trains and which loss: ``training/stages.py``) and a ``CheckpointManager`` (every file on disk:
``training/checkpoint.py``). It exposes its own progress — step, epoch, position in the epoch, RNG — as
``state_dict()``; ``training/build.py`` puts the pieces together. The loop knows nothing of Slurm or launchers.
A step reads nothing back from the device: losses are read at log points only (``training/hot_path.py``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler, SequentialSampler
from tqdm import tqdm

from met2net.config import Config
from met2net.data.datasets import Splits
from met2net.data.sampler import ShardedSampler, remap_state
from met2net.data.windows import batch_loader
from met2net.distributed.collectives import host_group
from met2net.model.met2net import Met2Net
from met2net.training.buffers import average_batchnorm_statistics
from met2net.training.checkpoint import CheckpointManager
from met2net.training.engine import Engine, engine_kind
from met2net.training.hot_path import StepMeter, to_device
from met2net.training.precision import autocast
from met2net.training.preemption import Preempted, StopWatch
from met2net.training.rng import derived_seed, rng_state, seed_everything, set_rng_state
from met2net.training.run_log import RunLog, device_memory, progress_bar, regression_warning, regressions
from met2net.training.stages import Schedule


@dataclass
class Trainer:
    cfg: Config
    run_dir: Path
    model: Met2Net
    schedule: Schedule
    engine: Engine
    splits: Splits
    total_steps: int
    checkpoints: CheckpointManager
    rank: int = 0
    world_size: int = 1
    micro_batch: int = 0  # per rank and micro-step; 0: training.batch_size (one process)
    device: torch.device = torch.device("cpu")
    started_from: str = ""  # the checkpoint whose weights this stage started from (training.init_from), if any

    def __post_init__(self) -> None:
        self.step, self.epoch = 0, 0
        self.saved_step = -1  # the step of the newest checkpoint this run wrote
        self.start_val: dict[str, float] = {}  # validation of the weights this stage started from
        self.stopwatch = StopWatch(self.cfg.training.time_limit, host_group(self.world_size))
        self.metrics_path = self.run_dir / "metrics.jsonl"
        board = self.run_dir / "tensorboard" / self.schedule.name if self.cfg.training.tensorboard else None
        self.run_log = RunLog(self.metrics_path, board)
        self.checkpoints.attach_log(self.log)
        micro = self.micro_batch or self.cfg.training.batch_size
        self.train_sampler = ShardedSampler(
            len(self.splits.train), rank=self.rank, world_size=self.world_size, seed=self.cfg.run.seed
        )
        workers = self.cfg.data.num_workers
        self.train_loader = batch_loader(self.splits.train, self.train_sampler, micro, True, workers)
        val_sampler: Sampler = SequentialSampler(self.splits.val)
        if self.world_size > 1:  # ranks split validation
            val_sampler = ShardedSampler(len(self.splits.val), self.rank, self.world_size, shuffle=False)
        self.val_loader = batch_loader(self.splits.val, val_sampler, micro, False, workers)
        self.normalise = None if self.splits.normalise is None else self.splits.normalise.to(self.device)

    # -- the run -------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        t = self.cfg.training
        bar = progress_bar(self.total_steps, self.step, self.schedule.name, quiet=self.rank != 0 or not t.progress)
        last_val: dict[str, float] = {}
        if self.started_from and self.step == 0:  # the yardstick this stage must not end worse than
            self.start_val = self.validate(split="val_start")
        meter = StepMeter()  # this step's losses stay on the device until a log point reads them
        while self.step < self.total_steps:
            self.train_sampler.set_epoch(self.epoch)
            meter.restart()
            for x, y in self.train_loader:
                self.train_sampler.advance(x.shape[0])
                boundary = self.engine.is_gradient_accumulation_boundary()
                meter.add(self.train_step(x, y), x.shape[0] * self.world_size)
                if not boundary:
                    continue
                self.step += 1
                step_seconds = meter.lap()
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    self.log_train(meter.read(), bar)
                if (t.val_every and self.step % t.val_every == 0) or self.step == self.total_steps:
                    last_val = self.validate()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save(last_val)
                if self.step >= self.total_steps:
                    break
                meter.restart()
                self.stop_if_asked(step_seconds, last_val, bar)
            else:
                self.epoch += 1
                if not t.val_every and self.step < self.total_steps:
                    last_val = self.validate()
        bar.close()
        self.save(last_val)
        self.report_regression(last_val)
        return last_val

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One micro-step; the detached loss terms, on the device and not read."""
        x, y = self.prepare(x), self.prepare(y)
        with autocast(self.cfg.training.precision, self.device):
            out = self.schedule.forward(self.model, x, y)
        self.engine.backward(out.loss)
        if self.engine.is_gradient_accumulation_boundary():
            self.schedule.after_backward(self.model)
        self.engine.step()
        return out.parts

    def log_train(self, values: dict[str, float], bar: tqdm) -> None:
        """The train record: this step's loss terms and the samples/s since the last one (``StepMeter.read``)."""
        bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{values['samples_per_s']:.1f}")
        lr = self.engine.get_lr()[0]
        self.log({"split": "train", "epoch": self.epoch, "lr": lr, **device_memory(self.device), **values})

    def validate(self, split: str = "val") -> dict[str, float]:
        """Validation losses over every rank's share of the validation windows, in float64 sums (on the device, read
        once), logged as ``split`` (``val_start``: the weights a stage started from)."""
        t = self.cfg.training
        self.sync_batchnorm()  # every rank validates the same model
        totals: dict[str, torch.Tensor] = {}
        count = 0
        for i, (x, y) in enumerate(self.val_loader):
            if t.val_batches and i >= t.val_batches:
                break
            with autocast(t.precision, self.device):
                parts = self.schedule.validation_losses(self.model, self.prepare(x), self.prepare(y))
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.double() * x.shape[0]
            count += x.shape[0]
        sums = torch.stack([*totals.values(), torch.tensor(count, dtype=torch.float64, device=self.device)])
        if self.world_size > 1:  # every rank computes the same keys, in the same order
            torch.distributed.all_reduce(sums)
        *values, count = sums.tolist()
        result = {k: v / max(count, 1) for k, v in zip(totals, values, strict=True)}
        self.log({"split": split, "samples": int(count), **result})
        return result

    def save(self, val: dict[str, float]) -> Path:
        """A checkpoint of this step, unless this run already wrote one at this step (a stop request at a
        checkpoint step). A run resumed at its last step writes it again, from exactly what it loaded."""
        path = self.stage_dir / f"step_{self.step}"
        if self.saved_step != self.step:
            self.checkpoints.save(self.step, self.engine, self.model, self.state_dict(), self.meta(val))
            self.saved_step = self.step
        return path

    def stop_if_asked(self, step_seconds: float, val: dict[str, float], bar: tqdm) -> None:
        """On a stop signal (any rank's) or before the time limit: checkpoint, then raise ``Preempted``."""
        reason = self.stopwatch.should_stop(step_seconds, self.world_size)
        if reason:
            bar.close()
            path = self.save(val)
            self.log({"split": "preempted", "reason": reason, "checkpoint": str(path)})
            raise Preempted(f"{reason}: checkpoint {path} written at step {self.step}")

    def report_regression(self, val: dict[str, float]) -> dict[str, list[float]]:
        """Say loudly (stderr and a ``regression`` record) when the stage ended with a larger validation forecast
        error, overall or for a variable, than the weights it started from; returns {key: [start, end]}."""
        worse = regressions(self.start_val, val)
        if worse:
            self.log({"split": "regression", "started_from": self.started_from, "worse": worse})
            if self.rank == 0:
                print(regression_warning(self.schedule.name, self.started_from, worse), file=sys.stderr)
        return worse

    def resume(self, ckpt: Path, mode: str) -> None:
        """Weights, optimizer, LR schedule, step, epoch, position in the epoch and RNG states: at the same world
        size the run goes on exactly as if it had not stopped. At another world size (DeepSpeed ZeRO 1/2/3 both
        times) the sampler keeps the global position in the epoch and the RNGs start afresh from (seed, step,
        rank): exact in the state, not bitwise in the losses that follow."""
        state = self.checkpoints.load(ckpt, self.engine, self.model, mode)
        self.load_state_dict(state)
        self.log({"split": "resume", "from": str(ckpt), "saved_world_size": state["saved_world_size"], "mode": mode})

    # -- progress as state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's progress: step, epoch, sampler position (the same on every rank) and RNG state (its own)."""
        state = {"step": self.step, "epoch": self.epoch, "sampler": self.train_sampler.state_dict()}
        return {**state, "start_val": self.start_val, "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``state["rng"]`` None: saved by another number of ranks; fresh RNG states from (seed, step, rank)."""
        self.step, self.epoch = state["step"], state["epoch"]
        self.start_val = state.get("start_val", {})
        self.train_sampler.load_state_dict(remap_state(state["sampler"], self.world_size))
        if state.get("rng") is not None:
            set_rng_state(state["rng"])
        else:
            seed_everything(derived_seed(self.cfg.run.seed, self.step, self.rank))

    def meta(self, val: dict[str, float]) -> dict[str, Any]:
        """What a checkpoint says about itself, so that evaluation and consolidation need nothing else."""
        kind = engine_kind(self.engine)
        return {
            "schedule": self.schedule.name,
            "model": self.cfg.model.__dict__.copy(),
            "config": self.cfg.to_dict(),
            "val": val,
            "world_size": self.world_size,
            "engine": kind,
            "zero_stage": self.cfg.deepspeed.zero_stage if kind == "deepspeed" else 0,
            "stats": {
                "variables": self.cfg.model.variables,
                "mean": self.splits.mean.tolist(),
                "std": self.splits.std.tolist(),
            },
        }

    # -- helpers -------------------------------------------------------------------------------------------------
    @property
    def stage_dir(self) -> Path:
        """Where this stage's checkpoints are: ``<run>/checkpoints/<schedule>``."""
        return self.checkpoints.stage_dir

    def sync_batchnorm(self) -> None:
        """Average the BatchNorm running statistics over the ranks (``training/buffers.py``): DeepSpeed, unlike
        DDP, leaves every rank with statistics of its own micro-batches."""
        if self.world_size > 1:
            average_batchnorm_statistics(self.model)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of the loader on the device, normalised (``hot_path.to_device``)."""
        return to_device(x, self.device, self.normalise)

    def log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.run_log.write({"step": self.step, "schedule": self.schedule.name, "time": time.time(), **record})
