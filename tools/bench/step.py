"""Samples/s of the optimised implicit step against the literal reference-order step.

Both run side by side in one process on the same weights and batches (mv5 5.625° by
default): the literal step is the reference's order and layers (separate E_k(x), the
zero-weight prediction term with its backward, plain PyTorch layers, NCHW); the optimised
one is `met2net.training.stages.Implicit` with fast kernels and channels-last. Before
timing, the first step's losses and gradients are compared (fp32 must agree to 1e-5
relative). Timings alternate literal/optimised steps so drift hits both alike.

    .venv/bin/python tools/bench/step.py [--batches 1 2 4] [--precisions fp32 bf16] [--steps 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from met2net.config import load_config
from met2net.model.met2net import Met2Net
from met2net.training.precision import autocast
from met2net.training.reference_step import LiteralImplicit
from met2net.training.stages import Implicit

ROOT = Path(__file__).resolve().parents[2]


class Runner:
    def __init__(self, model: Met2Net, schedule, precision: str):
        self.model, self.schedule, self.precision = model, schedule, precision
        schedule.configure(model)
        self.opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(self, x: torch.Tensor, y: torch.Tensor, keep_grads: bool = False):
        with autocast(self.precision, torch.device("cpu")):
            out = self.schedule.forward(self.model, x, y)
        out.loss.backward()
        self.schedule.after_backward(self.model)
        grads = None
        if keep_grads:
            grads = {k: p.grad.clone() for k, p in self.model.named_parameters() if p.grad is not None}
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out.parts, grads


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all gradients together: per-tensor ratios are meaningless for
    gradients that are zero in exact arithmetic (e.g. the attention keys' GroupNorm bias)."""
    diff = sum(((a[k].float() - b[k]) ** 2).sum() for k in b)
    return (diff / sum((b[k] ** 2).sum() for k in b)).sqrt().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/mv5_5.625.yaml"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up)")
    args = ap.parse_args()
    cfg = load_config(args.config, ["model.drop_path=0"])  # deterministic, so the check is exact
    torch.manual_seed(0)
    base = Met2Net(cfg.model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cfg.model.grid} grid, "
        f"{len(cfg.model.variables)} variables, {cfg.model.in_frames} → {cfg.model.out_frames} frames"
    )
    rows = []
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, cfg.model.in_frames, len(cfg.model.variables), *cfg.model.grid, generator=g)
        y = torch.randn(x.shape, generator=g)
        literal = Runner(copy.deepcopy(base).use_fast_kernels(False), LiteralImplicit(cfg), "fp32")
        lit_parts, lit_grads = literal.step(x, y, keep_grads=True)
        for precision in args.precisions:
            fast = Runner(copy.deepcopy(base).to(memory_format=torch.channels_last), Implicit(cfg), precision)
            parts, grads = fast.step(x, y, keep_grads=True)
            loss_rel = abs(parts["loss"].item() - lit_parts["loss"].item()) / lit_parts["loss"].item()
            grad_rel = rel_diff(grads, lit_grads)
            if precision == "fp32" and (loss_rel > 1e-5 or grad_rel > 1e-5):
                raise SystemExit(
                    f"fp32 optimised step disagrees with the literal one: loss {loss_rel:.2e}, "
                    f"gradients {grad_rel:.2e} (relative)"
                )
            times: dict[str, list[float]] = {"literal": [], "optimised": []}
            for _ in range(args.steps):
                for name, runner in (("literal", literal), ("optimised", fast)):
                    tic = time.perf_counter()
                    runner.step(x, y)
                    times[name].append(time.perf_counter() - tic)
            lit_s, fast_s = statistics.median(times["literal"]), statistics.median(times["optimised"])
            rows.append((batch, precision, lit_s, fast_s, loss_rel, grad_rel))
            print(
                f"batch {batch} {precision}: literal fp32 {lit_s:.3f} s/step ({batch / lit_s:.2f} samples/s), "
                f"optimised {fast_s:.3f} s/step ({batch / fast_s:.2f} samples/s), ratio {lit_s / fast_s:.2f}×; "
                f"first step vs literal: loss {loss_rel:.1e}, gradients {grad_rel:.1e} (relative)",
                flush=True,
            )
    header = [
        "batch",
        "precision",
        "literal fp32 s/step",
        "optimised s/step",
        "speed-up",
        "loss rel. diff",
        "grad rel. diff",
    ]
    print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for batch, precision, lit_s, fast_s, loss_rel, grad_rel in rows:
        cells = [
            batch,
            precision,
            f"{lit_s:.3f}",
            f"{fast_s:.3f}",
            f"{lit_s / fast_s:.2f}×",
            f"{loss_rel:.1e}",
            f"{grad_rel:.1e}",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
