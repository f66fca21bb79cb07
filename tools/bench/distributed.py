"""DeepSpeed overhead, data-parallel efficiency and ZeRO-3 memory, side by side in one run (CPU with gloo, or GPUs
with NCCL).

- ZeRO-2 on 1 rank against the plain PyTorch loop (`LocalEngine`), same model, batch and thread (or GPU);
- 2 ranks against 1 rank at the same per-rank batch (efficiency = 2-rank samples/s ÷ twice the 1-rank
  samples/s): 1 thread each on the CPU, one GPU each with ``--device cuda`` (left out where fewer than 2 are
  visible);
- ZeRO-3 bytes of parameters + gradients + optimizer state per rank against ZeRO-0's total ÷ N.

Implicit schedule on the mv5 5.625° model, `drop_path` 0, fp32 or ``--precision bf16`` (autocast); median of the
timed steps. Each row also splits the step into forward, backward (with DeepSpeed's gradient reduction) and the
optimizer step, each part ended by a device synchronisation; with ``--device cuda`` the rows give MFU (the step's
necessary work, `met2net/model/flops.py`, against the data sheet's dense peak: `tools/gpu_smoke_report.py`).

    .venv/bin/python tools/bench/distributed.py [--batch 1] [--steps 3] [--device cuda] [--precision bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from met2net.compat.deepspeed_internals import is_zero3, partition
from met2net.training.precision import autocast

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("forward", "backward", "step")


def _setup(batch: int, device: torch.device, overrides: list[str] = ()):
    from met2net.config import load_config
    from met2net.model.met2net import Met2Net
    from met2net.training.optim import build_lr_scheduler, build_optimizer
    from met2net.training.stages import Implicit

    cfg = load_config(ROOT / "configs/mv5_5.625.yaml", ["model.drop_path=0", *overrides])
    torch.manual_seed(0)
    model = Met2Net(cfg.model).to(device)
    schedule = Implicit(cfg)
    schedule.configure(model)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.training, device)
    x = torch.randn(batch, 12, 5, 32, 64).to(device)
    return cfg, model, schedule, optimizer, build_lr_scheduler(optimizer, cfg.training, 100), x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(engine, model, schedule, x, steps: int, precision: str) -> dict[str, float]:
    """Median seconds of the step and of its parts over ``steps`` steps after one warm-up step."""
    device = x.device
    times: dict[str, list[float]] = {part: [] for part in ("total", *PARTS)}
    for _ in range(steps + 1):
        tic = time.perf_counter()
        with autocast(precision, device):
            out = schedule.forward(model, x, x)
        _sync(device)
        forward = time.perf_counter()
        engine.backward(out.loss)
        schedule.after_backward(model)
        _sync(device)
        backward = time.perf_counter()
        engine.step()
        _sync(device)
        end = time.perf_counter()
        for part, seconds in zip(times, (end - tic, forward - tic, backward - forward, end - backward)):
            times[part].append(seconds)
    return {part: statistics.median(t[1:]) for part, t in times.items()}


def plain(batch: int, steps: int, device: torch.device, precision: str) -> dict[str, float]:
    from met2net.training.engine import LocalEngine

    torch.set_num_threads(1)
    cfg, model, schedule, optimizer, lr, x = _setup(batch, device)
    return _time_steps(LocalEngine(model, optimizer, lr, 0.0), model, schedule, x, steps, precision)


def _rank(
    rank: int, world: int, port: int, stage: int, batch: int, steps: int, out: str, device: str, precision: str
) -> None:
    if device == "cpu":
        os.environ.update(DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    from met2net.distributed.env import RankInfo
    from met2net.distributed.setup import init_process_group, teardown
    from met2net.training.engine import build_deepspeed_engine

    choice = init_process_group(
        RankInfo(
            rank=rank,
            world_size=world,
            local_rank=rank,
            local_world_size=world,
            node_rank=0,
            num_nodes=1,
            master_addr="127.0.0.1",
            master_port=port,
            launcher="single",
        )
    )
    try:
        overrides = [
            f"deepspeed.zero_stage={stage}",
            f"training.batch_size={batch * world}",
            "deepspeed.stage3_param_persistence_threshold=0",
        ]
        on = torch.device("cuda", choice.index) if choice.index is not None else torch.device("cpu")
        cfg, model, schedule, optimizer, lr, x = _setup(batch, on, overrides)
        engine = build_deepspeed_engine(cfg, model, optimizer, lr, world)
        times = _time_steps(engine, model, schedule, x, steps, precision)
        torch.save(times | {"bytes": _state_bytes(engine, model)}, f"{out}/rank{rank}.pt")
        del engine
    finally:
        teardown()


def _state_bytes(engine, model) -> int:
    """Bytes this rank holds for parameters (both copies), gradients and optimizer state."""

    def size(t) -> int:
        return t.numel() * t.element_size() if torch.is_tensor(t) else 0

    params = sum(size(partition(p)) if is_zero3(p) else size(p.data) for p in model.parameters())
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    state = sum(size(v) for s in inner.state.values() for v in s.values())
    grads = sum(size(p.grad) for g in inner.param_groups for p in g["params"] if p.grad is not None)
    # the optimizer's parameters are the trainable weights at ZeRO 0 and fp32 partitions at ZeRO 3: count them
    # once when they are the module's own tensors
    own = {p.data_ptr() for p in model.parameters()}
    masters = sum(size(p) for g in inner.param_groups for p in g["params"] if p.data_ptr() not in own)
    return params + masters + grads + state


def distributed(world: int, stage: int, batch: int, steps: int, device: str, precision: str) -> list[dict]:
    from met2net.distributed.env import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        args = (world, port, stage, batch, steps, out, device, precision)
        mp.start_processes(_rank, args=args, nprocs=world, start_method="spawn")
        return [torch.load(f"{out}/rank{r}.pt") for r in range(world)]


def split(t: dict[str, float]) -> str:
    return ", ".join(f"{part} {t[part]:.3f} s ({100 * t[part] / t['total']:.0f} %)" for part in PARTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1, help="samples per rank per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="gloo on CPU threads, or NCCL on GPUs")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    b, n, device, precision = args.batch, args.steps, args.device, args.precision
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and gpus == 0:
        raise SystemExit(f"--device cuda: torch {torch.__version__} finds no GPU (a CPU build, or none visible)")
    two_ranks = device == "cpu" or gpus >= 2
    t_plain = plain(b, n, torch.device("cuda", 0) if gpus else torch.device("cpu"), precision)
    [z2] = distributed(1, 2, b, n, device, precision)
    two = distributed(2, 2, b, n, device, precision) if two_ranks else None
    [z0] = distributed(1, 0, b, n, device, precision)
    z3 = distributed(2, 3, b, n, device, precision) if two_ranks else None
    per_rank = "1 thread per rank" if device == "cpu" else f"1 GPU per rank ({torch.cuda.get_device_name(0)})"
    print(f"mv5 5.625°, implicit step, {precision}, {per_rank}, batch {b} per rank\n")
    mfu = mfu_of(device, precision, b)
    print("| measurement | value | target |\n|---|---|---|")
    print(f"| plain PyTorch loop, 1 rank | {t_plain['total']:.3f} s/step{mfu(t_plain)}; {split(t_plain)} | |")
    print(
        f"| ZeRO-2, 1 rank | {z2['total']:.3f} s/step ({z2['total'] / t_plain['total'] - 1:+.1%} vs plain){mfu(z2)}; "
        f"{split(z2)} | ≤ +5 % |"
    )
    if two is not None:
        slowest = max(two, key=lambda r: r["total"])
        t_two = slowest["total"]
        efficiency = (2 * b / t_two) / (2 * b / z2["total"])
        print(
            f"| ZeRO-2, 2 ranks | {t_two:.3f} s/step, {2 * b / t_two:.3f} samples/s; slowest rank: {split(slowest)} | |"
        )
        print(f"| data-parallel efficiency, 2 ranks vs 1 | {efficiency:.2f} | ≥ 0.90 |")
    print(f"| ZeRO-0 state bytes, 1 rank | {z0['bytes'] / 2**20:.1f} MiB | |")
    if z3 is not None:
        most = max(r["bytes"] for r in z3)
        print(
            f"| ZeRO-3 state bytes per rank (2 ranks) ÷ (ZeRO-0 ÷ 2) | {most / 2**20:.1f} MiB, "
            f"{most / (z0['bytes'] / 2):.3f} | ≤ 1.05 |"
        )
    else:
        print("\none GPU: the 2-rank rows (efficiency, ZeRO-3 partitioning) need two")


def mfu_of(device: str, precision: str, batch: int):
    """A step's MFU as a table cell's suffix on a GPU the data sheet table knows; nothing on the CPU."""
    if device != "cuda":
        return lambda t: ""
    from met2net.config import load_config
    from met2net.model.flops import implicit_step_flops

    sys.path.insert(0, str(ROOT / "tools"))
    from gpu_smoke_report import datasheet_tflops

    peak = datasheet_tflops(torch.cuda.get_device_name(0), precision)
    work = implicit_step_flops(load_config(ROOT / "configs/mv5_5.625.yaml").model) * batch
    return lambda t: f", MFU {100 * work / t['total'] / (peak * 1e12):.1f} %" if peak else ", MFU n/a"


if __name__ == "__main__":
    main()
