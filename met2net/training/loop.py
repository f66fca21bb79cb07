"""The train loop: data → step → validate → checkpoint, on top of an *engine*.

The engine owns backward, optimizer and LR-scheduler steps (``backward``, ``step``,
``get_lr``, ``is_gradient_accumulation_boundary``, ``module``) — the calls a DeepSpeed
engine answers — so a DeepSpeed engine slots in under the same loop. The loop knows
nothing of Slurm or launchers.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import SequentialSampler
from tqdm import tqdm

from met2net.config import Config, ConfigError
from met2net.data.datasets import Splits, build_splits
from met2net.data.sampler import ShardedSampler, remap_state
from met2net.data.windows import batch_loader
from met2net.distributed.env import discover, free_port
from met2net.distributed.setup import init_process_group
from met2net.model.met2net import Met2Net, count_parameters
from met2net.training import checkpoint, universal
from met2net.training.buffers import average_batchnorm_statistics, batchnorm_statistics, set_batchnorm_statistics
from met2net.training.engine import build_deepspeed_engine, deepspeed_config, micro_batch_size, write_deepspeed_config
from met2net.training.optim import build_lr_scheduler, build_optimizer
from met2net.training.preemption import Preempted, StopWatch
from met2net.training.stages import Schedule, make_schedule


class LocalEngine:
    """Single-process engine: plain PyTorch with the calls of a DeepSpeed engine."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float):
        self.module, self.optimizer, self.lr_scheduler = module, optimizer, lr_scheduler
        self.grad_clip = grad_clip
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def is_gradient_accumulation_boundary(self) -> bool:
        return True

    def step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def save_checkpoint(self, save_dir: Path, tag: str, client_state: dict[str, Any], save_latest: bool = False):
        torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "lr_scheduler": self.lr_scheduler.state_dict(), "client_state": client_state},
                   Path(save_dir) / tag / "engine.pt")

    def load_checkpoint(self, load_dir: Path, tag: str) -> tuple[Path, dict[str, Any]]:
        path = Path(load_dir) / tag / "engine.pt"
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        return path, state["client_state"]


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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Trainer:
    cfg: Config
    run_dir: Path
    model: Met2Net
    schedule: Schedule
    engine: Any
    splits: Splits
    total_steps: int
    rank: int = 0
    world_size: int = 1
    micro_batch: int = 0  # per rank and micro-step; 0: training.batch_size (one process)
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        self.step, self.epoch = 0, 0
        self.stage_dir = self.run_dir / "checkpoints" / self.schedule.name
        self.stopwatch = StopWatch(self.cfg.training.time_limit)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        micro = self.micro_batch or self.cfg.training.batch_size
        self.train_sampler = ShardedSampler(len(self.splits.train), rank=self.rank, world_size=self.world_size,
                                            seed=self.cfg.run.seed)
        workers = self.cfg.data.num_workers
        self.train_loader = batch_loader(self.splits.train, self.train_sampler, micro, True, workers)
        val_sampler = (SequentialSampler(self.splits.val) if self.world_size == 1 else  # ranks split validation
                       ShardedSampler(len(self.splits.val), self.rank, self.world_size, shuffle=False))
        self.val_loader = batch_loader(self.splits.val, val_sampler, micro, False, workers)

    # -- phases ------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        t = self.cfg.training
        quiet = self.rank != 0 or not t.progress  # otherwise None: tqdm stays off without a TTY
        bar = tqdm(total=self.total_steps, desc=self.schedule.name, disable=True if quiet else None,
                   dynamic_ncols=True, mininterval=1.0)
        bar.update(self.step)
        last_val = {}
        while self.step < self.total_steps:
            self.train_sampler.set_epoch(self.epoch)
            for x, y in self.train_loader:
                self.train_sampler.advance(x.shape[0])
                tic = time.perf_counter()
                boundary = self.engine.is_gradient_accumulation_boundary()
                parts = self.train_step(x, y)
                rate = x.shape[0] * self.world_size / (time.perf_counter() - tic)
                if not boundary:
                    continue
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.4f}", samples_s=f"{rate:.1f}")
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    self.log({"split": "train", "epoch": self.epoch, "lr": self.engine.get_lr()[0],
                              "samples_per_s": rate, **parts})
                if (t.val_every and self.step % t.val_every == 0) or self.step == self.total_steps:
                    last_val = self.validate()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save(last_val)
                if self.step >= self.total_steps:
                    break
                reason = self.stopwatch.should_stop(time.perf_counter() - tic, self.world_size, self.device)
                if reason:
                    bar.close()
                    path = self.save(last_val)
                    self.log({"split": "preempted", "reason": reason, "checkpoint": str(path)})
                    raise Preempted(f"{reason}: checkpoint {path} written at step {self.step}")
            else:
                self.epoch += 1
                if not t.val_every and self.step < self.total_steps:
                    last_val = self.validate()
        bar.close()
        self.save(last_val)
        return last_val

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        x, y = self.prepare(x), self.prepare(y)
        with autocast(self.cfg.training.precision, self.device):
            out = self.schedule.forward(self.model, x, y)
        self.engine.backward(out.loss)
        if self.engine.is_gradient_accumulation_boundary():
            self.schedule.after_backward(self.model)
        self.engine.step()
        return {k: float(v) for k, v in out.parts.items()}

    def validate(self) -> dict[str, float]:
        t = self.cfg.training
        self.sync_batchnorm()  # every rank validates the same model
        totals: dict[str, float] = {}
        count = 0
        for i, (x, y) in enumerate(self.val_loader):
            if t.val_batches and i >= t.val_batches:
                break
            with autocast(t.precision, self.device):
                parts = self.schedule.validation_losses(self.model, self.prepare(x), self.prepare(y))
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v) * x.shape[0]
            count += x.shape[0]
        if self.world_size > 1:  # every rank computes the same keys, in the same order
            sums = torch.tensor([*totals.values(), count], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(sums)
            totals, count = dict(zip(totals, sums[:-1].tolist())), int(sums[-1])
        result = {k: v / max(count, 1) for k, v in totals.items()}
        self.log({"split": "val", "samples": count, **result})
        return result

    def save(self, val: dict[str, float]) -> Path:
        """Every rank writes its engine state (DeepSpeed's files, or ours), RNG state and own BatchNorm statistics
        into a partial directory; rank 0 adds the whole weights (`model.pt`, gathered under ZeRO-3, with the
        statistics averaged over the ranks) and publishes it. Saving leaves the live statistics as they were, so
        where the checkpoints fall does not change the run, and a resume continues it bitwise."""
        tmp = checkpoint.partial_dir(self.stage_dir, self.step)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        client = {"step": self.step, "epoch": self.epoch, "sampler": self.train_sampler.state_dict()}
        self.engine.save_checkpoint(self.stage_dir, tag=tmp.name, client_state=client, save_latest=False)
        torch.save(rng_state(), tmp / f"rng_rank{self.rank}.pt")
        live = [b.clone() for b in batchnorm_statistics(self.model)]
        torch.save(live, tmp / f"batchnorm_rank{self.rank}.pt")
        self.sync_batchnorm()  # model.pt (rank 0's) holds every rank's statistics
        with _whole_parameters(self.model):  # ZeRO-3: every rank takes part in the gather
            if self.rank == 0:
                torch.save(self.model.state_dict(), tmp / "model.pt")
        set_batchnorm_statistics(self.model, live)
        self._barrier()
        if self.rank == 0:
            meta = {"schedule": self.schedule.name, "model": self.cfg.model.__dict__.copy(),
                    "config": self.cfg.to_dict(), "val": val, "world_size": self.world_size,
                    "engine": self.engine_kind, "zero_stage": self.zero_stage, **client,
                    "stats": {"variables": self.cfg.model.variables, "mean": self.splits.mean.tolist(),
                              "std": self.splits.std.tolist()}}
            checkpoint.publish(self.stage_dir, self.step, meta)
            checkpoint.prune(self.stage_dir, self.cfg.training.keep_last)
        self._barrier()
        return self.stage_dir / f"step_{self.step}"

    def resume(self, ckpt: Path, mode: str) -> None:
        """Weights, optimizer, LR schedule, step, epoch, position in the epoch and RNG states: at the same world
        size the run goes on exactly as if it had not stopped. At another world size (DeepSpeed ZeRO 1/2/3 both
        times) DeepSpeed's universal checkpoint carries weights, optimizer and LR schedule, ``model.pt`` the frozen
        copies and BatchNorm statistics, the sampler keeps the global position in the epoch, and the RNGs start
        afresh from (seed, step, rank): exact in the state, not bitwise in the losses that follow. ``mode``:
        ``universal.resume_mode``'s answer, which the engine was built for."""
        saved_world = int(checkpoint.load_meta(ckpt).get("world_size", 1))
        if mode == "universal":
            if not self.engine.load_universal_checkpoint():
                raise RuntimeError(f"{ckpt}: written by {saved_world} rank(s), this run has {self.world_size}: build "
                                   "the DeepSpeed engine with load_universal=True (build_trainer does)")
            self._on_rank0(universal.convert, ckpt)
            _, client = self.engine.load_checkpoint(ckpt, tag=universal.UNIVERSAL)
            universal.restore_untrained(self.model, torch.load(ckpt / "model.pt", map_location="cpu",
                                                               weights_only=True))
        else:
            _, client = self.engine.load_checkpoint(self.stage_dir, tag=ckpt.name)
        self.step, self.epoch = client["step"], client["epoch"]
        self.train_sampler.load_state_dict(remap_state(client["sampler"], self.world_size))
        if saved_world == self.world_size:
            set_rng_state(torch.load(ckpt / f"rng_rank{self.rank}.pt", weights_only=False))
            own = ckpt / f"batchnorm_rank{self.rank}.pt"
            if own.exists():  # older checkpoints: the engine's (rank 0's) statistics
                set_batchnorm_statistics(self.model, torch.load(own, weights_only=True))
        else:
            seed_everything(universal.derived_seed(self.cfg.run.seed, self.step, self.rank))
        self.log({"split": "resume", "from": str(ckpt), "saved_world_size": saved_world, "mode": mode})

    @property
    def engine_kind(self) -> str:
        return "local" if isinstance(self.engine, LocalEngine) else "deepspeed"

    @property
    def zero_stage(self) -> int:
        return self.cfg.deepspeed.zero_stage if self.engine_kind == "deepspeed" else 0

    def sync_batchnorm(self) -> None:
        """Average the BatchNorm running statistics over the ranks (``training/buffers.py``): DeepSpeed, unlike
        DDP, leaves every rank with statistics of its own micro-batches."""
        if self.world_size > 1:
            average_batchnorm_statistics(self.model)

    def _on_rank0(self, fn, *args) -> None:
        """``fn(*args)`` on rank 0 while the others wait; an error there is raised on every rank."""
        error = None
        if self.rank == 0:
            try:
                fn(*args)
            except Exception as e:  # reported to the other ranks, then raised here
                error = e
        if self.world_size > 1:
            message = [f"rank 0: {error}" if error is not None else None]
            torch.distributed.broadcast_object_list(message, src=0)
            if message[0] is not None and error is None:
                raise RuntimeError(message[0])
        if error is not None:
            raise error

    def _barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    # -- helpers -----------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous()

    def log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        record = {"step": self.step, "schedule": self.schedule.name, "time": time.time(), **record}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _whole_parameters(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    params = list(model.parameters())
    if params and hasattr(params[0], "ds_tensor"):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)
    return contextlib.nullcontext()


def uses_deepspeed(cfg: Config, world_size: int) -> bool:
    """One process without ZeRO or accumulation runs on the plain-PyTorch engine; anything else on DeepSpeed."""
    return world_size > 1 or cfg.deepspeed.zero_stage > 0 or cfg.deepspeed.gradient_accumulation > 1


def build_trainer(cfg: Config) -> Trainer:
    """Ranks, seed, data, model (optionally initialised from an earlier stage), schedule, engine."""
    info = discover(os.environ, default_port=free_port())
    deepspeed = uses_deepspeed(cfg, info.world_size)
    if deepspeed and cfg.momentum.reference_backward:
        raise ConfigError("'momentum.reference_backward' relies on single-process autograd behaviour; "
                          "set it to false under DeepSpeed")
    if deepspeed:
        init_process_group(info)
    seed_everything(cfg.run.seed)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if info.rank == 0:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    splits = build_splits(cfg)
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model, with_copies=schedule.needs_copies)
    resume_from = checkpoint.latest(run_dir / "checkpoints" / schedule.name) if cfg.training.resume else None
    source = cfg.training.init_from or (str(run_dir) if schedule.name == "stage2" else "")
    if source and resume_from is None:
        wanted = "stage1" if schedule.name == "stage2" else None
        checkpoint.init_from(model, source, wanted, cfg.model.__dict__)
    model.use_activation_checkpointing(cfg.deepspeed.activation_checkpointing)
    if cfg.training.channels_last and not deepspeed:  # DeepSpeed flattens and partitions parameters as contiguous
        model.to(memory_format=torch.channels_last)
    schedule.configure(model)
    device = torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if not deepspeed:  # DeepSpeed moves the module to its device itself
        model.to(device)
    t = cfg.training
    micro = micro_batch_size(cfg, info.world_size) if deepspeed else t.batch_size
    steps_per_epoch = len(splits.train) // t.batch_size  # every rank takes an equal share of each batch
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(splits.train)} windows, fewer than one batch "
                         f"(training.batch_size={t.batch_size}); add data.train_years or lower the batch")
    total = t.max_steps or t.epochs * steps_per_epoch
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, t)
    lr_scheduler = build_lr_scheduler(optimizer, t, total)
    resume_mode = resume_from and universal.resume_mode(
        resume_from, checkpoint.load_meta(resume_from), info.world_size, "deepspeed" if deepspeed else "local",
        cfg.deepspeed.zero_stage)
    load_universal = resume_mode == "universal"
    if deepspeed:
        engine = build_deepspeed_engine(cfg, model, optimizer, lr_scheduler, info.world_size, load_universal)
        if info.rank == 0:
            write_deepspeed_config(run_dir, deepspeed_config(cfg, info.world_size, load_universal))
    else:
        engine = LocalEngine(model, optimizer, lr_scheduler, t.grad_clip)
    trainer = Trainer(cfg, run_dir, model, schedule, engine, splits, total, info.rank, info.world_size, micro,
                      device)
    if resume_from is not None:
        trainer.resume(resume_from, resume_mode)
    trainer.log({"split": "start", "trainable_params": count_parameters(model, trainable_only=True),
                 "total_params": count_parameters(model), "train_windows": len(splits.train),
                 "val_windows": len(splits.val), "total_steps": total, "world_size": info.world_size,
                 "num_nodes": info.num_nodes, "launcher": info.launcher, "master_addr": info.master_addr,
                 "engine": "deepspeed" if deepspeed else "local"})
    return trainer
