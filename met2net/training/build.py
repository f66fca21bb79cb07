"""Putting a run together: ranks, data, model, engine, checkpoints → a ready ``Trainer``.

Each builder does one thing, in the order ``build_trainer`` calls them; the decisions that depend on each other
(which engine, whether to resume and how, where the weights come from) are made here once and handed down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from met2net.compat import check_versions
from met2net.config import Config, ConfigError
from met2net.data.datasets import Splits, build_splits
from met2net.distributed.collectives import gather_to_all, on_rank0
from met2net.distributed.env import RankInfo, discover, free_port
from met2net.distributed.setup import bind_device, init_process_group
from met2net.errors import UserError
from met2net.model.met2net import Met2Net, count_parameters
from met2net.training import checkpoint, layout, run_lock, universal
from met2net.training.checkpoint import CheckpointManager
from met2net.training.engine import (
    Engine,
    LocalEngine,
    build_deepspeed_engine,
    deepspeed_config,
    micro_batch_size,
    uses_deepspeed,
    write_deepspeed_config,
)
from met2net.training.host_memory import keep_freed_memory
from met2net.training.loop import Trainer
from met2net.training.optim import build_lr_scheduler, build_optimizer
from met2net.training.rng import seed_everything
from met2net.training.stages import Schedule, make_schedule
from met2net.training.startup import check_placement, format_report, rank_record, startup_report
from met2net.training.storage import check_run_dir, write_run_file


@dataclass(frozen=True)
class Ranks:
    """Where this process sits (``info``), whether it runs on DeepSpeed, its device, and every rank's
    ``startup.rank_record`` in rank order."""

    info: RankInfo
    deepspeed: bool
    device: torch.device
    placement: list[dict[str, Any]]


def setup_ranks(cfg: Config) -> Ranks:
    """Where this process sits and on which device, and whether it runs on DeepSpeed (then the process group is
    started here). The device is bound and checked before the group forms; the ranks' records are then gathered
    (the run's first collective) and checked for two ranks on one GPU."""
    info = discover(os.environ, default_port=free_port())
    deepspeed = uses_deepspeed(cfg, info.world_size)
    if deepspeed and cfg.momentum.reference_backward:
        raise ConfigError(
            "'momentum.reference_backward' relies on single-process autograd behaviour; set it to false under DeepSpeed"
        )
    choice = bind_device(info)
    if deepspeed:
        check_versions("deepspeed")
        init_process_group(info, choice, cfg.distributed.timeout_s)
    placement = gather_to_all(rank_record(info, choice), info.world_size)
    check_placement(placement)
    return Ranks(info, deepspeed, torch.device(choice.name), placement)


def prepare_run_dir(cfg: Config, rank: int, world_size: int = 1) -> Path:
    """The run directory, claimed for this run (``run_lock``: rank 0 holds its lock until the run ends) before
    anything is written there; a directory another run holds is refused on every rank."""
    run_dir = Path(cfg.run.dir)

    def claim() -> None:
        check_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        run_lock.acquire(run_dir)

    on_rank0(claim, rank, world_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def init_source(cfg: Config, schedule: Schedule, run_dir: Path) -> str:
    """Where the stage's weights come from: ``training.init_from``, for stage two by default this run's stage one."""
    return cfg.training.init_from or (str(run_dir) if schedule.name == "stage2" else "")


def build_model(
    cfg: Config, schedule: Schedule, run_dir: Path, resuming: bool, deepspeed: bool, device: torch.device
) -> Met2Net:
    """The model with what the schedule trains unfrozen; weights from ``init_source`` unless the run resumes, which
    loads its own."""
    model = Met2Net(cfg.model, with_copies=schedule.needs_copies)
    source = init_source(cfg, schedule, run_dir)
    if source and not resuming:
        checkpoint.init_from_source(model, source, bool(cfg.training.init_from), schedule.name, cfg.model.__dict__)
        schedule.start_from_other_weights(model)
    model.use_activation_checkpointing(cfg.deepspeed.activation_checkpointing)
    if cfg.training.channels_last and not deepspeed:  # DeepSpeed flattens and partitions parameters as contiguous
        model.to(memory_format=torch.channels_last)
    schedule.configure(model)
    if not deepspeed:  # DeepSpeed moves the module to its device itself
        model.to(device)
    if cfg.training.compile:
        model.compile_parts()
    return model


def count_steps(cfg: Config, splits: Splits) -> int:
    t = cfg.training
    steps_per_epoch = len(splits.train) // t.batch_size  # every rank takes an equal share of each batch
    if steps_per_epoch == 0:
        raise UserError(
            f"the training split has {len(splits.train)} windows, fewer than one batch "
            f"(training.batch_size={t.batch_size}); add data.train_years or lower the batch"
        )
    return t.schedule_max_steps or t.epochs * steps_per_epoch


def build_engine(
    cfg: Config,
    model: Met2Net,
    total_steps: int,
    info: RankInfo,
    deepspeed: bool,
    run_dir: Path,
    load_universal: bool,
    device: torch.device,
) -> Engine:
    """Our optimizer (with the kernels for ``device``) and LR schedule over the trained parameters, under DeepSpeed
    or the plain-PyTorch engine."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg.training, device)
    lr_scheduler = build_lr_scheduler(optimizer, cfg.training, total_steps)
    if not deepspeed:
        return LocalEngine(model, optimizer, lr_scheduler, cfg.training.grad_clip)
    engine = build_deepspeed_engine(cfg, model, optimizer, lr_scheduler, info.world_size, load_universal)
    if info.rank == 0:
        write_deepspeed_config(run_dir, deepspeed_config(cfg, info.world_size, load_universal))
    return engine


def build_trainer(cfg: Config) -> Trainer:
    """Ranks, seed, data, model (optionally initialised from an earlier stage), schedule, engine, and the resume
    from the stage's newest intact checkpoint."""
    ranks = setup_ranks(cfg)
    info, deepspeed, device = ranks.info, ranks.deepspeed, ranks.device
    seed_everything(cfg.run.seed)
    host_memory_kept = cfg.training.keep_host_memory and keep_freed_memory()
    run_dir = prepare_run_dir(cfg, info.rank, info.world_size)
    # On a GPU the batches are normalised there (two cheap passes; the loader only copies); on the CPU the loader
    # normalises each window while it is in cache, 2x faster than torch over whole batches (docs/performance.md).
    splits = build_splits(cfg, normalise_in_loader=device.type == "cpu")
    schedule = make_schedule(cfg)
    schedule.use_mask(splits.valid, device)  # points filled for missing values count in no loss
    t = cfg.training
    checkpoints = CheckpointManager(
        layout.stage_dir(run_dir, schedule.name), info.rank, info.world_size, t.keep_last, t.best_by
    )
    resume_from = checkpoints.find_resumable() if cfg.training.resume else None
    if resume_from is not None:
        checkpoint.check_resumable(resume_from, cfg.model.__dict__)
    model = build_model(cfg, schedule, run_dir, resume_from is not None, deepspeed, device)
    total = count_steps(cfg, splits)
    resume_mode = resume_from and universal.resume_mode(
        resume_from,
        checkpoint.load_meta(resume_from),
        info.world_size,
        "deepspeed" if deepspeed else "local",
        cfg.deepspeed.zero_stage,
    )
    micro = micro_batch_size(cfg, info.world_size) if deepspeed else cfg.training.batch_size
    engine = build_engine(cfg, model, total, info, deepspeed, run_dir, resume_mode == "universal", device)
    trainer = Trainer(
        cfg,
        run_dir,
        model,
        schedule,
        engine,
        splits,
        total,
        checkpoints,
        info.rank,
        info.world_size,
        micro,
        device,
        started_from=init_source(cfg, schedule, run_dir),
    )
    if resume_from is not None:
        trainer.resume(resume_from, resume_mode)
    report = startup_report(
        ranks.placement,
        cfg.training.precision,
        deepspeed_config(cfg, info.world_size, resume_mode == "universal") if deepspeed else None,
    )
    if info.rank == 0:  # the run is accepted: only now does its config replace the one there
        write_run_file(run_dir / "config.yaml", cfg.to_yaml())
        print(format_report(report), flush=True)
    trainer.log(
        {
            "split": "start",
            "trainable_params": count_parameters(model, trainable_only=True),
            "total_params": count_parameters(model),
            "train_windows": len(splits.train),
            "val_windows": len(splits.val),
            "total_steps": total,
            "world_size": info.world_size,
            "num_nodes": info.num_nodes,
            "launcher": info.launcher,
            "master_addr": info.master_addr,
            "engine": "deepspeed" if deepspeed else "local",
            "host_memory_kept": host_memory_kept,
            "startup": report,
        }
    )
    return trainer
