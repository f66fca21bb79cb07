"""``met2net check CONFIG [k=v ...]``: the preflight of a training run, for a login node — no GPU needed, no process
group, nothing written — in well under a minute. It meets what ``met2net train`` would meet, in the same order and
through the same code, and prints a checklist (``--json`` for scripts); exit code 2 when anything would stop the run.

- config: the file and its overrides, validated (every rule of ``met2net/config.py``);
- launch: the launcher's variables (torchrun, srun, mpirun or none) and this rank's device binding;
- model: built as the schedule trains it, with its parameter counts;
- data: shard directory, index, shards and statistics against the config — variables, grid, the statistics' training
  years and channels, a whole window in every split (``--checksums``: every shard against its sha256 as well);
- run directory: a directory, writable, not held by another run, with room for the checkpoints it keeps;
- checkpoint: what a resume would load (the newest intact checkpoint, verified, of this model, loadable by this
  engine and world size), else the weights ``training.init_from`` names (stage two: this run's stage one), loaded;
- memory: per rank, for the ZeRO stage, world size and micro-batch — weights, gradients and optimizer state counted
  from the parameters, activations measured in the synthetic step;
- step: one forward and backward of the schedule's loss on a synthetic sample, timed;
- plan: ranks × micro-batch × accumulation, the engine, steps, checkpoints, an estimate of the time, the command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from met2net.config import Config, load_config
from met2net.errors import UserError, error_line

STATUS = {"ok": "ok", "fail": "FAIL", "skip": "skip"}
GIB = 2**30


@dataclass
class Item:
    """One line of the checklist: ``status`` ok, fail or skip (a check it depends on failed)."""

    name: str
    status: str
    detail: str
    values: dict[str, Any] = field(default_factory=dict)


class Checklist:
    """Checks run in order; each may need earlier ones. An error a user can fix (``errors.error_line``) fails its
    item and the list goes on; anything else is a bug in met2net and propagates with its traceback."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def passed(self, name: str) -> bool:
        return any(i.name == name and i.status == "ok" for i in self.items)

    def run(self, name: str, check: Callable[[], tuple[str, dict[str, Any], Any]], *needs: str) -> Any:
        """``check()`` → (detail, values, result); the result is returned (None when the item failed or skipped)."""
        missing = [n for n in needs if not self.passed(n)]
        if missing:
            return self.skip(name, f"needs {', '.join(missing)}")
        try:
            detail, values, result = check()
        except Exception as e:  # noqa: BLE001 - error_line tells a user's problem from a bug, which is re-raised
            if (line := error_line(e)) is None:
                raise
            self.items.append(Item(name, "fail", line))
            return None
        self.items.append(Item(name, "ok", detail, values))
        return result

    def skip(self, name: str, why: str) -> None:
        self.items.append(Item(name, "skip", why))

    @property
    def ok(self) -> bool:
        """No check failed (skipped ones are left out on request, or follow a failure)."""
        return all(i.status != "fail" for i in self.items)

    def text(self, source: str) -> str:
        lines = [f"met2net check {source}"]
        lines += [f"  {STATUS[i.status]:<5} {i.name:<15} {i.detail}" for i in self.items]
        failed = [i.name for i in self.items if i.status == "fail"]
        lines.append(
            f"{len(failed)} problem(s): {', '.join(failed)}; fix them before met2net train (exit code 2)"
            if failed
            else "every check passed"
        )
        return "\n".join(lines)

    def json(self, source: str) -> str:
        doc = {"config": source, "ok": self.ok, "checks": [asdict(i) for i in self.items]}
        return json.dumps(doc, indent=1, ensure_ascii=False)


# -- memory ---------------------------------------------------------------------------------------------------------
def memory_per_rank(
    parameters: int, trained: int, zero_stage: int, world_size: int, deepspeed: bool, activations: int
) -> dict[str, int]:
    """Bytes one rank holds during a step, fp32 throughout (bf16 only autocasts the forward): weights 4 B per
    parameter, momentum copies included (ZeRO-3: this rank's 1/N); gradients 4 B per trained parameter (ZeRO 2-3:
    1/N); Adam's two moments 8 B per trained parameter (ZeRO 1-3: 1/N), plus DeepSpeed's fp32 master partition under
    ZeRO 1-3 (4 B per trained parameter / N); and ``activations``. Not counted: the CUDA context, DeepSpeed's
    communication buckets, the allocator's slack."""
    n = world_size

    def share(num_bytes: int, partitioned: bool) -> int:
        return math.ceil(num_bytes / n) if partitioned else num_bytes

    memory = {
        "weights": share(4 * parameters, zero_stage >= 3),
        "gradients": share(4 * trained, zero_stage >= 2),
        "optimizer": share(8 * trained, zero_stage >= 1)
        + (share(4 * trained, True) if deepspeed and zero_stage else 0),
        "activations": activations,
    }
    return {**memory, "total": sum(memory.values())}


def checkpoint_bytes(parameters: int, trained: int) -> int:
    """About one checkpoint on disk: ``model.pt`` (every weight) and the engine's state (weights, Adam moments)."""
    return 8 * parameters + 8 * trained


def synthetic_step(cfg: Config, model: torch.nn.Module, schedule: Any, device: torch.device) -> tuple[float, int]:
    """(seconds, activation bytes) of one forward and backward of ``schedule``'s loss on one random sample, timed
    after one untimed call (the first pays for kernel selection and allocation); the activations are the tensors
    autograd saves for backward, by distinct storage, the parameters left out."""
    from met2net.training.precision import autocast

    m = cfg.model
    x, y = (torch.randn(1, m.in_frames, len(m.variables), *m.grid, device=device) for _ in range(2))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    seconds = 0.0
    for _ in range(2):
        saved.clear()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(cfg.training.precision, device):
            loss = schedule.forward(model, x, y).loss
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
    return seconds, sum(saved.values())


def _size(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB / 10 else f"{num_bytes / 2**20:.1f} MiB"


# -- the checks -----------------------------------------------------------------------------------------------------
def preflight(
    config: str, overrides: list[str], world_size: int | None = None, checksums: bool = False, step: bool = True
) -> Checklist:
    """Every check of the module docstring, in order; ``world_size`` plans for that many ranks (default: the
    launcher's). ``step`` False leaves out the synthetic step (and the measured activations)."""
    from met2net.distributed.env import discover
    from met2net.distributed.setup import bind_device
    from met2net.model.met2net import Met2Net, count_parameters
    from met2net.training import checkpoint, layout, run_lock, storage, universal
    from met2net.training.build import init_source
    from met2net.training.engine import micro_batch_size, uses_deepspeed
    from met2net.training.stages import make_schedule

    out = Checklist()
    cfg: Config = out.run("config", lambda: _config(config, overrides))
    if cfg is None:
        return out
    t, ds = cfg.training, cfg.deepspeed

    def launch() -> tuple[str, dict[str, Any], Any]:
        info = discover(os.environ)
        choice = bind_device(info)
        world = world_size or info.world_size
        launcher = "no launcher" if info.launcher == "single" else info.launcher
        where = f"{launcher}: rank {info.rank} of {info.world_size} on {socket.gethostname()}"
        detail = f"{where}, device {choice.name} ({choice.layout})" + (f"; {choice.note}" if choice.note else "")
        if world != info.world_size:
            detail += f"; planned for {world} ranks (--world-size)"
        return detail, {"world_size": world, "device": choice.name}, (world, choice)

    world, choice = out.run("launch", launch) or (world_size or 1, None)
    deepspeed = uses_deepspeed(cfg, world)
    schedule = make_schedule(cfg)
    run_dir = Path(cfg.run.dir)

    def model_() -> tuple[str, dict[str, Any], Any]:
        model = Met2Net(cfg.model, with_copies=schedule.needs_copies)
        model.use_activation_checkpointing(ds.activation_checkpointing)
        schedule.configure(model)
        total, trained = count_parameters(model), count_parameters(model, trainable_only=True)
        return (
            f"{total:,} parameters, {trained:,} trained by {schedule.name}",
            {"parameters": total, "trained": trained},
            (model, total, trained),
        )

    model, parameters, trained = out.run("model", model_, "config") or (None, 0, 0)

    def data() -> tuple[str, dict[str, Any], Any]:
        return _data(cfg, checksums)

    splits = out.run("data", data)

    def run_directory() -> tuple[str, dict[str, Any], Any]:
        storage.check_run_dir(run_dir)
        if run_dir.is_dir():
            run_lock.check_free(run_dir)
        if cause := storage.probe(run_dir):
            raise storage.StorageError(f"run.dir {run_dir}: cannot write there: {cause}. {storage.ADVICE[cause]}")
        every = t.schedule_max_steps // t.checkpoint_every if t.schedule_max_steps and t.checkpoint_every else 1
        kept = (t.keep_last or every) + 2  # and the best, and the one being written
        need, free = kept * checkpoint_bytes(parameters, trained), shutil.disk_usage(storage.existing(run_dir)).free
        if free < need:
            raise storage.StorageError(
                f"run.dir {run_dir}: {_size(free)} free, but {kept} checkpoints of about "
                f"{_size(checkpoint_bytes(parameters, trained))} need {_size(need)}. "
                + storage.ADVICE["no space left on device"]
            )
        state = "exists" if run_dir.is_dir() else "will be created"
        return f"{run_dir} {state}, writable, {_size(free)} free", {"free_bytes": free}, None

    out.run("run directory", run_directory, "model")

    def checkpoint_() -> tuple[str, dict[str, Any], Any]:
        stage = layout.stage_dir(run_dir, schedule.name)
        skipped: list[str] = []
        ckpt = checkpoint.newest_intact(stage, skipped.append) if t.resume and stage.is_dir() else None
        if ckpt is not None:
            meta = checkpoint.load_meta(ckpt)
            checkpoint.check_resumable(ckpt, cfg.model.__dict__)
            if checkpoint.unsafe_files(ckpt):  # what training would refuse to unpickle
                raise checkpoint.untrusted(ckpt, UserError("a file that is not data"))
            mode = universal.resume_mode(ckpt, meta, world, "deepspeed" if deepspeed else "local", ds.zero_stage)
            how = " through DeepSpeed's universal form" if mode == "universal" else ""
            detail = f"resumes from {ckpt} (step {meta.get('step')}, intact){how}" + "".join(f"; {s}" for s in skipped)
            return detail, {"resume_from": str(ckpt)}, None
        if source := init_source(cfg, schedule, run_dir):
            meta = checkpoint.init_from_source(model, source, bool(t.init_from), schedule.name, cfg.model.__dict__)
            detail = f"starts from step 0 with the weights of {source} ({meta.get('schedule')} step {meta.get('step')})"
            return detail, {"init_from": source}, None
        return f"starts from step 0 with new weights (no {schedule.name} checkpoint in {run_dir})", {}, None

    out.run("checkpoint", checkpoint_, "model")

    def step_() -> tuple[str, dict[str, Any], Any]:
        device = torch.device(choice.name if choice is not None else "cpu")
        seconds, activations = synthetic_step(cfg, model.to(device), schedule, device)
        detail = (
            f"{schedule.name} forward+backward of 1 sample on {device}: {seconds:.3f} s (after one untimed call); "
            f"{_size(activations)} of activations saved for backward"
        )
        values = {"seconds_per_sample": seconds, "activation_bytes_per_sample": activations}
        return detail, values, (seconds, activations)

    measured = out.run("step", step_, "model") if step else out.skip("step", "left out (--no-step)")

    def plan() -> tuple[str, dict[str, Any], Any]:
        micro = micro_batch_size(cfg, world) if deepspeed else t.batch_size
        per_epoch = len(splits.train) // t.batch_size if splits is not None else None
        steps = t.schedule_max_steps or (t.epochs * per_epoch if per_epoch else None)
        engine = f"DeepSpeed ZeRO-{ds.zero_stage}" if deepspeed else "plain PyTorch"
        when = f"every {t.checkpoint_every} steps" if t.checkpoint_every else "at the end"
        estimate = ""
        if measured and steps:
            estimate = (
                f"; at most {_duration(measured[0] * t.batch_size / world * steps)} (the 1-sample step × samples)"
            )
        launcher = f" on {world} ranks (torchrun, srun or met2net submit)" if world > 1 else ""
        detail = (
            f"{world} rank(s) × micro-batch {micro} × accumulation {ds.gradient_accumulation} = batch {t.batch_size}; "
            f"{engine}; {steps or 'epochs × (steps per epoch, known with the data)'} steps; "
            f"checkpoints {when} into {layout.stage_dir(run_dir, schedule.name)} (keep {t.keep_last or 'all'})"
            f"{estimate}; command: met2net train {' '.join([config, *overrides])}{launcher}"
        )
        return detail, {"micro_batch": micro, "steps": steps, "engine": engine}, micro

    micro = out.run("plan", plan, "config")

    def memory() -> tuple[str, dict[str, Any], Any]:
        per_sample = measured[1] if measured else 0
        mem = memory_per_rank(parameters, trained, ds.zero_stage, world, deepspeed, per_sample * micro)
        engine = f"ZeRO-{ds.zero_stage} on {world} rank(s)" if deepspeed else "plain PyTorch, one process"
        parts = ", ".join(f"{k} {_size(v)}" for k, v in mem.items() if k != "total")
        activations = f" × micro-batch {micro}" if measured else " (not measured: --no-step)"
        detail = f"{_size(mem['total'])} per rank ({engine}): {parts}{activations}"
        if choice is not None and choice.index is not None:
            capacity = torch.cuda.get_device_properties(choice.index).total_memory
            if mem["total"] > 0.9 * capacity:
                raise UserError(
                    f"{detail}: more than 90 % of {choice.name}'s {_size(capacity)}; raise deepspeed.zero_stage, the "
                    "ranks, or deepspeed.gradient_accumulation (a smaller micro-batch), or set "
                    "deepspeed.activation_checkpointing=true"
                )
            detail += f" of {_size(capacity)}"
        return detail, {"bytes": mem}, None

    out.run("memory", memory, "model", "plan")
    return out


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def _config(path: str, overrides: list[str]) -> tuple[str, dict[str, Any], Config]:
    cfg = load_config(path, overrides)
    t = cfg.training
    length = f"{t.schedule_max_steps} steps" if t.schedule_max_steps else f"{t.epochs} epoch(s)"
    detail = f"{path}: {t.schedule}, {length}, batch {t.batch_size}, {cfg.data.source} data, run.dir {cfg.run.dir}"
    return detail, {"schedule": t.schedule}, cfg


def _data(cfg: Config, checksums: bool) -> tuple[str, dict[str, Any], Any]:
    """The splits ``met2net train`` would build (shards: index, shard times, statistics, windows); the built-in data
    is generated at start-up, so only its variables are checked here."""
    from met2net.data import synthetic
    from met2net.data.datasets import build_splits
    from met2net.data.shards import read_index, verify_shards

    d, m = cfg.data, cfg.model
    if d.source == "synthetic":
        unknown = [v for v in m.variables if v not in synthetic.VARIABLES]
        if unknown:
            raise UserError(
                f"'model.variables' {unknown} are not in the built-in dataset (it has {list(synthetic.VARIABLES)})"
            )
        return "built-in synthetic data (generated at start-up; its windows are checked then)", {}, None
    splits = build_splits(cfg)
    index = read_index(Path(d.path))
    if checksums:
        verify_shards(Path(d.path))
    windows = {k: len(v) for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if v}
    detail = (
        f"{d.path}: {len(index['shards'])} shard(s), {', '.join(m.variables)} on {m.grid[0]}×{m.grid[1]}, statistics "
        "of its training years; windows "
        + ", ".join(f"{k} {n}" for k, n in windows.items())
        + ("; every shard matches its sha256" if checksums else "")
    )
    return detail, {"windows": windows}, splits
