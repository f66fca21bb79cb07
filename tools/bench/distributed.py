"""DeepSpeed overhead, data-parallel efficiency and ZeRO-3 memory, side by side in one run (CPU, gloo).

- ZeRO-2 on 1 rank against the plain PyTorch loop (`LocalEngine`), same model, batch and thread;
- 2 ranks × 1 thread against 1 rank × 1 thread at the same per-rank batch (efficiency = 2-rank
  samples/s ÷ twice the 1-rank samples/s);
- ZeRO-3 bytes of parameters + gradients + optimizer state per rank against ZeRO-0's total ÷ N.

Implicit schedule on the mv5 5.625° model, fp32, `drop_path` 0; median of the timed steps.

    .venv/bin/python tools/bench/distributed.py [--batch 1] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from met2net.compat.deepspeed_internals import is_zero3, partition

ROOT = Path(__file__).resolve().parents[2]


def _setup(batch: int, overrides: list[str] = ()):
    from met2net.config import load_config
    from met2net.model.met2net import Met2Net
    from met2net.training.optim import build_lr_scheduler, build_optimizer
    from met2net.training.stages import Implicit

    cfg = load_config(ROOT / "configs/mv5_5.625.yaml", ["model.drop_path=0", *overrides])
    torch.manual_seed(0)
    model = Met2Net(cfg.model)
    schedule = Implicit(cfg)
    schedule.configure(model)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.training)
    x = torch.randn(batch, 12, 5, 32, 64)
    return cfg, model, schedule, optimizer, build_lr_scheduler(optimizer, cfg.training, 100), x


def _time_steps(engine, model, schedule, x, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 1):
        tic = time.perf_counter()
        out = schedule.forward(model, x, x)
        engine.backward(out.loss)
        schedule.after_backward(model)
        engine.step()
        times.append(time.perf_counter() - tic)
    return times[1:]


def plain(batch: int, steps: int) -> float:
    from met2net.training.engine import LocalEngine

    torch.set_num_threads(1)
    cfg, model, schedule, optimizer, lr, x = _setup(batch)
    return statistics.median(_time_steps(LocalEngine(model, optimizer, lr, 0.0), model, schedule, x, steps))


def _rank(rank: int, world: int, port: int, stage: int, batch: int, steps: int, out: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    from met2net.distributed.env import RankInfo
    from met2net.distributed.setup import init_process_group, teardown
    from met2net.training.engine import build_deepspeed_engine

    init_process_group(
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
        cfg, model, schedule, optimizer, lr, x = _setup(batch, overrides)
        engine = build_deepspeed_engine(cfg, model, optimizer, lr, world)
        times = _time_steps(engine, model, schedule, x, steps)
        torch.save({"time": statistics.median(times), "bytes": _state_bytes(engine, model)}, f"{out}/rank{rank}.pt")
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


def distributed(world: int, stage: int, batch: int, steps: int) -> list[dict]:
    from met2net.distributed.env import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank, args=(world, port, stage, batch, steps, out), nprocs=world, start_method="spawn")
        return [torch.load(f"{out}/rank{r}.pt") for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1, help="samples per rank per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    args = ap.parse_args()
    b, n = args.batch, args.steps
    t_plain = plain(b, n)
    [z2] = distributed(1, 2, b, n)
    two = distributed(2, 2, b, n)
    [z0] = distributed(1, 0, b, n)
    z3 = distributed(2, 3, b, n)
    t_two = max(r["time"] for r in two)
    efficiency = (2 * b / t_two) / (2 * b / z2["time"])
    print(f"mv5 5.625°, implicit step, fp32, 1 thread per rank, batch {b} per rank\n")
    print("| measurement | value | target |\n|---|---|---|")
    print(f"| plain PyTorch loop, 1 rank | {t_plain:.3f} s/step | |")
    print(f"| ZeRO-2, 1 rank | {z2['time']:.3f} s/step ({z2['time'] / t_plain - 1:+.1%} vs plain) | ≤ +5 % |")
    print(f"| ZeRO-2, 2 ranks | {t_two:.3f} s/step, {2 * b / t_two:.3f} samples/s | |")
    print(f"| data-parallel efficiency, 2 ranks vs 1 | {efficiency:.2f} | ≥ 0.90 |")
    per_rank = max(r["bytes"] for r in z3)
    print(f"| ZeRO-0 state bytes, 1 rank | {z0['bytes'] / 2**20:.1f} MiB | |")
    print(
        f"| ZeRO-3 state bytes per rank (2 ranks) ÷ (ZeRO-0 ÷ 2) | {per_rank / 2**20:.1f} MiB, "
        f"{per_rank / (z0['bytes'] / 2):.3f} | ≤ 1.05 |"
    )


if __name__ == "__main__":
    main()
