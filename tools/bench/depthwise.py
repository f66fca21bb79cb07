"""The optimised step's depthwise convolutions on the CPU: what oneDNN's backward costs, and what two other ways of
computing it would save (issue 17, item 2: the step's work besides its matrix products).

One optimised fp32 step of the mv5 5.625° model (batch 1, channels-last, as `tools/bench/step.py` runs it) is
recorded under a dispatch mode to find each depthwise convolution it runs (input, kernel, padding) and how often,
forward and backward. Then each shape is timed alone, side by side in one run (median of ``--repeat`` calls, after
warm-up, on the same tensors):

- forward, and backward as autograd asks oneDNN for it (input, weight and bias gradients in one call);
- backward with the bias gradient taken apart (oneDNN for the input and weight gradients, ``sum`` for the bias):
  oneDNN's depthwise kernels take far longer for a bias gradient than summing;
- the weight gradient alone, by oneDNN and by a loop over the kernel's taps (a product and a sum over the batch and
  the pixels, channels innermost) compiled by ``torch.compile`` (inductor's C++ code; needs a C++ compiler, and each
  shape compiles for seconds), checked against oneDNN's to 1e-5 relative.

The table gives milliseconds per call and per step (calls × time), and what the step would save with the bias apart
and with both. Nothing here changes the model.

    .venv/bin/python tools/bench/depthwise.py [--repeat 30] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from met2net.config import load_config
from met2net.model.met2net import Met2Net
from met2net.training.host_memory import keep_freed_memory
from met2net.training.stages import Implicit

ROOT = Path(__file__).resolve().parents[2]
aten = torch.ops.aten


class Recorder(TorchDispatchMode):
    """Counts the depthwise convolutions (groups = channels > 1) of what runs under it, forward and backward, by
    (input shape, weight shape, padding, dilation, has bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.forward: Counter = Counter()
        self.backward: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is aten.convolution.default:
            x, w, b, _, padding, dilation, _, _, groups = args
            if groups > 1 and groups == x.shape[1]:
                self.forward[(tuple(x.shape), tuple(w.shape), tuple(padding), tuple(dilation), b is not None)] += 1
        elif func is aten.convolution_backward.default:
            _, x, w, bias_sizes, _, padding, dilation, _, _, groups, _ = args
            if groups > 1 and groups == x.shape[1]:
                key = (tuple(x.shape), tuple(w.shape), tuple(padding), tuple(dilation), bias_sizes is not None)
                self.backward[key] += 1
        return func(*args, **(kwargs or {}))


def record_step() -> Recorder:
    """One optimised fp32 step of mv5 5.625° at batch 1 (after one warm-up step), recorded."""
    cfg = load_config(ROOT / "configs/mv5_5.625.yaml", ["model.drop_path=0"])
    torch.manual_seed(0)
    schedule = Implicit(cfg)
    model = Met2Net(cfg.model, with_copies=schedule.needs_copies).to(memory_format=torch.channels_last)
    schedule.configure(model)
    m = cfg.model
    x = torch.randn(1, m.in_frames, len(m.variables), *m.grid)
    y = torch.randn(1, m.out_frames, len(m.variables), *m.grid)
    schedule.forward(model, x, y).loss.backward()
    model.zero_grad(set_to_none=True)
    with Recorder() as rec:
        schedule.forward(model, x, y).loss.backward()
    return rec


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1e3


def tap_loop(k: int, h: int, w: int, dil: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The weight gradient of a depthwise k×k convolution from the padded input (N, H', W', C) and the output's
    gradient (N, H, W, C), channels innermost: one product and sum per tap; (k·k, C)."""

    def weight_grad(xp: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        taps = [
            (xp[:, i * dil : i * dil + h, j * dil : j * dil + w, :] * gy).sum((0, 1, 2))
            for i in range(k)
            for j in range(k)
        ]
        return torch.stack(taps)

    return weight_grad


def measure(key: tuple, repeat: int, compile_: bool) -> dict[str, float | str]:
    shape, wshape, padding, dilation, has_bias = key
    c, k = shape[1], wshape[-1]
    x = torch.randn(*shape).to(memory_format=torch.channels_last)
    weight = torch.randn(*wshape) * 0.1
    bias = torch.randn(c) if has_bias else None
    y = F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=c)
    gy = torch.randn_like(y)
    args = ([c] if has_bias else None, (1, 1), padding, dilation, False, (0, 0), c)

    def backward(mask: tuple[bool, bool, bool]) -> Callable[[], object]:
        return lambda: aten.convolution_backward(gy, x, weight, *args, mask)

    out = {
        "forward": median_ms(lambda: F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=c), repeat),
        "backward": median_ms(backward((True, True, has_bias)), repeat),
        "input_weight": median_ms(backward((True, True, False)), repeat),
        "input": median_ms(backward((True, False, False)), repeat),
        "weight": median_ms(backward((False, True, False)), repeat),
        "bias_sum": median_ms(lambda: gy.sum((0, 2, 3)), repeat) if has_bias else 0.0,
    }
    out["bias_apart"] = out["input_weight"] + out["bias_sum"]
    if compile_:
        fn = torch.compile(tap_loop(k, y.shape[2], y.shape[3], dilation[0]), dynamic=False)

        def compiled() -> torch.Tensor:
            xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).permute(0, 2, 3, 1)
            return fn(xp, gy.permute(0, 2, 3, 1))

        tic = time.perf_counter()
        got = compiled().T.reshape(wshape)
        out["compile_s"] = time.perf_counter() - tic
        want = backward((False, True, False))()[1]
        err = ((got - want).abs().max() / want.abs().max()).item()
        if err > 1e-5:
            raise SystemExit(f"{key}: the compiled weight gradient is {err:.1e} (relative) off oneDNN's")
        out["compiled_weight"] = median_ms(compiled, repeat)
        out["both"] = out["input"] + out["compiled_weight"] + out["bias_sum"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=30, help="timed calls of each variant; the median counts")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled weight gradient")
    args = p.parse_args()
    keep_freed_memory()
    rec = record_step()
    compile_ = not args.no_compile
    head = "| input | kernel | calls fwd / bwd | forward | backward (oneDNN) | bias apart | weight: oneDNN |"
    head += (
        " compiled taps | both | per step: oneDNN | bias apart | both |"
        if compile_
        else " per step: oneDNN | bias apart |"
    )
    print(f"depthwise convolutions of one optimised fp32 step, mv5 5.625°, batch 1, {torch.get_num_threads()} threads;")
    print("milliseconds per call (median), per step = calls × time (forward and backward)\n")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    totals = Counter()
    for key in sorted(set(rec.forward) | set(rec.backward), key=str):
        r = measure(key, args.repeat, compile_)
        nf, nb = rec.forward[key], rec.backward[key]
        step = {
            "oneDNN": nf * r["forward"] + nb * r["backward"],
            "bias apart": nf * r["forward"] + nb * r["bias_apart"],
        }
        if compile_:
            step["both"] = nf * r["forward"] + nb * r["both"]
        totals.update(step)
        shape, wshape, padding, dilation, _ = key
        kernel = f"{wshape[-2]}×{wshape[-1]}" + (f", dilation {dilation[0]}" if dilation[0] > 1 else "")
        cells = [
            str(list(shape)),
            kernel,
            f"{nf} / {nb}",
            f"{r['forward']:.2f}",
            f"{r['backward']:.2f}",
            f"{r['bias_apart']:.2f}",
            f"{r['weight']:.2f}",
        ]
        if compile_:
            cells += [f"{r['compiled_weight']:.2f} (compiled in {r['compile_s']:.0f} s)", f"{r['both']:.2f}"]
        cells += [f"{v:.1f}" for v in step.values()]
        print("| " + " | ".join(cells) + " |")
    print("\nper step, all depthwise convolutions: " + ", ".join(f"{k} {v:.1f} ms" for k, v in totals.items()))


if __name__ == "__main__":
    main()
