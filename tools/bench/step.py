"""Samples/s of the optimised implicit step against the literal reference-order step, and how close each comes to
this machine's matrix-product peak.

Both steps run side by side in one process on the same weights and batches (mv5 5.625° by default): the literal
step is the reference's order and layers (separate E_k(x), the zero-weight prediction term with its backward, plain
PyTorch layers, NCHW); the optimised one is `met2net.training.stages.Implicit` with fast kernels and channels-last.
Each runs in fp32 and under bf16 autocast. Before timing, the first step's losses and gradients are compared with
the literal fp32 step (fp32 must agree to 1e-5 relative). Timed steps alternate between all variants of a batch, so
drift hits them alike.

Utilisation: the step's necessary work (`met2net/model/flops.py`: five Translator passes and the codecs, counted
from the config; FlopCounterMode's count of each step's own work is printed beside it) over the step's time, as a
fraction of this machine's matrix-product rates in the step's precision: the best of the Translator's own GEMM
shapes (as `torch.mm`, and its 1×1 convolution as the model runs it) and a large square product. The rates are
measured right after every timed step, averaged over as long as the step took, and the median of the per-step
fractions is reported, so that a shared machine's load of the moment hits step and yardstick alike; a best-of-5
table of the rates, before and after the steps, shows the machine's best and how much the load moved. The header
names the CPU and the kernels oneDNN chose (from its verbose log).

A second table splits each step into forward, backward and optimizer, each part ended by a device synchronisation.

``--device cuda`` runs the same on a GPU (issue 17, item 5): the products and steps are timed with a synchronisation
at their end, the square product is 8192³, fp32 steps and products run with TF32 as training leaves it (cuDNN's
convolutions in TF32, matrix products not) while the first steps' 1e-5 check runs without TF32, and each step's row
adds its MFU (necessary work against the data sheet's dense bf16 or TF32 peak, `tools/gpu_smoke_report.py`) and
the most GPU memory it held.

    .venv/bin/python tools/bench/step.py [--batches 1 2 4] [--precisions fp32 bf16] [--steps 3] [--device cuda]
    .venv/bin/python tools/bench/step.py --profile [--batches 1] [--precisions fp32] [--device cuda]

``--profile``: instead, where the optimised step's time goes: torch.profiler's operators of one step (after five
warm-up steps) by self CPU time, and, from another step profiled with its shapes recorded (which costs page faults:
compare its rows with each other, not with the first table), the largest copies (`aten::copy_`, layout conversions
among them), convolutions and convolution backwards by shape.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from met2net.config import Config, load_config
from met2net.model.flops import flop_counter, implicit_step_flops, implicit_step_macs
from met2net.model.met2net import Met2Net
from met2net.training.host_memory import keep_freed_memory
from met2net.training.precision import autocast
from met2net.training.reference_step import LiteralImplicit
from met2net.training.stages import Implicit, Schedule

ROOT = Path(__file__).resolve().parents[2]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
SQUARE = {"cpu": 2048, "cuda": 8192}  # the large square product's side: big enough to reach the device's peak
WARMUP_PROFILE = 5  # steps before the profiled one: the heap settles (page faults stop) after 3–5


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU), so that a host timer measures them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One step variant on its own copy of the weights. ``split`` holds the last step's forward, backward and
    optimizer seconds, each ended by a device synchronisation (free on the CPU; on a GPU three per step, which the
    training loop does not make)."""

    def __init__(self, model: Met2Net, schedule: Schedule, precision: str, device: torch.device):
        self.model, self.schedule, self.precision, self.device = model.to(device), schedule, precision, device
        schedule.configure(self.model)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3, foreach=True)
        self.split: dict[str, float] = {}

    def step(self, x: torch.Tensor, y: torch.Tensor, keep_grads: bool = False) -> tuple[dict, dict | None]:
        tic = time.perf_counter()
        with autocast(self.precision, self.device):
            out = self.schedule.forward(self.model, x, y)
        sync(self.device)
        forward = time.perf_counter()
        out.loss.backward()
        self.schedule.after_backward(self.model)
        sync(self.device)
        backward = time.perf_counter()
        grads = None
        if keep_grads:
            grads = {k: p.grad.clone() for k, p in self.model.named_parameters() if p.grad is not None}
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        self.split = {
            "forward": forward - tic,
            "backward": backward - forward,
            "optimizer": time.perf_counter() - backward,
        }
        return out.parts, grads


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all gradients together: per-tensor ratios are meaningless for
    gradients that are zero in exact arithmetic (e.g. the attention keys' GroupNorm bias)."""
    diff = sum(((a[k].float() - b[k]) ** 2).sum() for k in b)
    return (diff / sum((b[k] ** 2).sum() for k in b)).sqrt().item()


# -- the machine ------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's name, family/model and the flags that decide the matrix kernels (from /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()) if v}
    flags = set(field.get("flags", "").split())
    present = [f for f in CPU_FLAGS if f in flags]
    absent = [f for f in CPU_FLAGS if f not in flags]
    return (
        f"{field.get('model name', 'unknown CPU')} (family {field.get('cpu family', '?')}, model "
        f"{field.get('model', '?')}), {os.cpu_count()} logical CPUs; flags: {' '.join(present) or 'none'}"
        f" (absent: {' '.join(absent) or 'none'})"
    )


def onednn_log(fn: Callable[[], object]) -> str:
    """What oneDNN's verbose mode prints (to the C stdout) while ``fn`` runs."""
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return log.read()


def onednn_kernels() -> str:
    """oneDNN's ISA and the implementation it runs for a 1×1 convolution (channels-last, as the Translator's) and
    a matrix product, fp32 and bf16; a product that oneDNN does not run went to MKL."""
    x = torch.randn(1, 256, 16, 160).to(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 1, 1).to(memory_format=torch.channels_last)
    a, b = torch.randn(2560, 256), torch.randn(256, 256)
    isa, found = "", []
    for name, dtype in DTYPES.items():
        for op, fn in (
            ("conv 1×1", lambda d=dtype: F.conv2d(x.to(d), w.to(d))),
            ("matmul", lambda d=dtype: a.to(d) @ b.to(d)),
        ):
            log = onednn_log(fn)
            isa = isa or next(iter(re.findall(r"isa:([^,\n]+)", log)), "")
            kinds = {"conv 1×1": "convolution", "matmul": "matmul"}
            impl = [line.split(",")[6] for line in log.splitlines() if f",exec,cpu,{kinds[op]}," in line]
            found.append(f"{op} {name}: {impl[-1] if impl else 'not oneDNN (MKL)'}")
    return f"oneDNN ISA: {isa or 'unknown'}; kernels: " + "; ".join(found)


# -- matrix-product peaks ---------------------------------------------------------------------------------------------
def best_rate(
    fn: Callable[[], object], flops: float, device: torch.device, repeats: int = 5, min_seconds: float = 0.1
) -> float:
    """GFLOP/s of ``fn`` (``flops`` per call) on ``device``: best of ``repeats`` loops of at least ``min_seconds``."""
    fn()
    sync(device)
    tic, calls = time.perf_counter(), 0
    while time.perf_counter() - tic < min_seconds:
        fn()
        calls += 1
        sync(device)
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - tic) / calls)
    return flops / best / 1e9


def gemm_shapes(cfg: Config, batch: int) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N) of the Translator's matrix products at ``batch`` (M = batch × variables × latent pixels): its
    1×1 convolutions D→D and D↔4D forward, and their weight gradients (reduction over M)."""
    d = cfg.model.hid_t
    m = batch * len(cfg.model.variables) * cfg.model.latent_grid[0] * cfg.model.latent_grid[1]
    return [
        ("D→D", m, d, d),
        ("D→4D", m, d, 4 * d),
        ("4D→D", m, 4 * d, d),
        ("D×D weight grad", d, m, d),
        ("D×4D weight grad", d, m, 4 * d),
    ]


class Peaks:
    """The products whose rates are this machine's yardstick, with their operands made once per precision: the
    Translator's shapes as torch.mm, its D→D 1×1 convolution as the model runs it (channels-last), and a large
    square product."""

    def __init__(self, cfg: Config, batch: int, precisions: list[str], device: torch.device):
        self.device = device
        self.products: dict[str, dict[str, tuple[Callable[[], object], float]]] = {}
        h, w = cfg.model.latent_grid
        square = SQUARE[device.type]
        for precision in precisions:
            dtype = DTYPES[precision]
            shapes = [(f"mm {name} {m}×{k}·{k}×{n}", m, k, n) for name, m, k, n in gemm_shapes(cfg, batch)]
            for label, m, k, n in [*shapes, (f"mm square {square}³", square, square, square)]:
                a, b = (torch.randn(r, c, dtype=dtype, device=device) for r, c in ((m, k), (k, n)))
                self.products.setdefault(label, {})[precision] = (lambda a=a, b=b: a @ b, 2.0 * m * k * n)
            _, m, d, _ = gemm_shapes(cfg, batch)[0]
            x = torch.randn(m // (h * w), d, h, w, dtype=dtype, device=device).to(memory_format=torch.channels_last)
            wt = torch.randn(d, d, 1, 1, dtype=dtype, device=device).to(memory_format=torch.channels_last)
            label = f"conv 1×1 D→D channels-last ({m} pixels)"
            self.products.setdefault(label, {})[precision] = (lambda x=x, wt=wt: F.conv2d(x, wt), 2.0 * m * d * d)

    def measure(self, precision: str | None = None, repeats: int = 5, min_seconds: float = 0.1) -> dict[str, dict]:
        """{product: {precision: GFLOP/s}} (one precision, or all)."""
        return {
            label: {
                p: best_rate(fn, flops, self.device, repeats, min_seconds)
                for p, (fn, flops) in by.items()
                if precision in (None, p)
            }
            for label, by in self.products.items()
        }

    def adjacent(self, precision: str, seconds: float) -> tuple[float, float]:
        """(best Translator-shape rate, square rate) averaged over ``seconds`` right now, shared out among the
        products: the yardstick of a step just timed, measured for as long as the step ran, so that it sees the
        same load on a shared machine (a best-of-N burst would catch its quiet moments)."""
        rates: dict[str, dict[str, float]] = {}
        for label, by in self.products.items():
            fn, flops = by[precision]
            tic, calls = time.perf_counter(), 0
            while calls == 0 or time.perf_counter() - tic < seconds / len(self.products):
                fn()
                calls += 1
            sync(self.device)  # the time ends when the queued products have run
            rates[label] = {precision: flops * calls / (time.perf_counter() - tic) / 1e9}
        return peak_of(rates, precision)


def peak_of(rates: dict[str, dict[str, float]], precision: str) -> tuple[float, float]:
    """(best rate over the Translator's shapes, the square product's rate) in ``precision``."""
    shapes = [r[precision] for label, r in rates.items() if "square" not in label and precision in r]
    square = next(r[precision] for label, r in rates.items() if "square" in label)
    return max(shapes), square


# -- the steps --------------------------------------------------------------------------------------------------------
def runners(base: Met2Net, cfg: Config, precisions: list[str], device: torch.device) -> dict[tuple[str, str], Runner]:
    """(step, precision) → a Runner on a copy of the same weights; the literal fp32 step first (the yardstick)."""
    out = {}
    for precision in ["fp32", *[p for p in precisions if p != "fp32"]]:
        literal = copy.deepcopy(base).use_fast_kernels(False)
        out[("literal", precision)] = Runner(literal, LiteralImplicit(cfg), precision, device)
        if precision in precisions:
            fast = copy.deepcopy(base).to(memory_format=torch.channels_last)
            out[("optimised", precision)] = Runner(fast, Implicit(cfg), precision, device)
    return out


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 products and convolutions without TF32 on a GPU (cuDNN allows TF32 by default, and training leaves it
    so), for the first steps' 1e-5 check; no effect on the CPU."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def first_steps(group: dict, x: torch.Tensor, y: torch.Tensor) -> dict[tuple[str, str], dict]:
    """Each variant's first step (its warm-up), counted by FlopCounterMode, with its loss and gradients compared
    with the literal fp32 step's; an fp32 optimised step more than 1e-5 off stops the bench."""
    checks: dict[tuple[str, str], dict] = {}
    for key, runner in group.items():
        with flop_counter() as counter, exact_fp32():
            parts, grads = runner.step(x, y, keep_grads=True)
        checks[key] = {"flops": counter.get_total_flops() / x.shape[0], "loss": parts["loss"].item(), "grads": grads}
    ref = checks[("literal", "fp32")]
    for key, c in checks.items():
        c["loss_rel"] = abs(c["loss"] - ref["loss"]) / ref["loss"]
        c["grad_rel"] = rel_diff(c["grads"], ref["grads"])
        if key == ("optimised", "fp32") and (c["loss_rel"] > 1e-5 or c["grad_rel"] > 1e-5):
            raise SystemExit(
                f"fp32 optimised step disagrees with the literal one: loss {c['loss_rel']:.2e}, "
                f"gradients {c['grad_rel']:.2e} (relative)"
            )
    return checks


def timed_steps(
    group: dict, x: torch.Tensor, y: torch.Tensor, steps: int, peaks: Peaks, flops: float
) -> dict[tuple[str, str], dict[str, float]]:
    """Per variant, the median over ``steps`` rounds of: seconds per step, its forward, backward and optimizer
    parts, and the step's rate of necessary work (``flops`` per step) as a fraction of the Translator-shape and
    square product rates measured right after it, for as long (``Peaks.adjacent``) — side by side, so that the
    machine's load of the moment hits both; on a GPU also the most memory a step held. The variants alternate within
    each round."""
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in group}
    for _ in range(steps):
        for (step, precision), runner in group.items():
            if runner.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(runner.device)
            tic = time.perf_counter()
            runner.step(x, y)
            seconds = time.perf_counter() - tic
            memory = torch.cuda.max_memory_allocated(runner.device) if runner.device.type == "cuda" else 0
            shape_peak, square_peak = peaks.adjacent(precision, seconds)
            rate = flops / seconds / 1e9
            rounds[(step, precision)].append(
                {"seconds": seconds, "of_shape": rate / shape_peak, "of_square": rate / square_peak}
                | runner.split
                | {"memory": memory}
            )
    return {
        key: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "memory"}
        | {"memory": max(r["memory"] for r in rs)}
        for key, rs in rounds.items()
    }


def timed(fn: Callable[[], object]) -> str:
    """``fn``'s wall time and the minor page faults it took (a step that faults is not the step that trains)."""
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    fn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return f"{time.perf_counter() - started:.3f} s, {faults:,} page faults"


def profile(base: Met2Net, cfg: Config, batch: int, precision: str, device: torch.device, rows: int = 20) -> None:
    """Print where one optimised step's time goes (``--profile``): by self CPU time, or on a GPU by the device's."""
    runner = Runner(copy.deepcopy(base).to(memory_format=torch.channels_last), Implicit(cfg), precision, device)
    x, y = inputs(cfg, batch, device)
    for _ in range(WARMUP_PROFILE):
        runner.step(x, y)
    # Recording shapes can allocate enough to move the heap, and the step then faults in fresh pages (up to ~10^5
    # faults and 1.5-3x the step time, most of it charged to whichever operator first writes a new block): the
    # operator table comes from a step profiled without shapes, the by-shape tables from one with them.
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        took = timed(lambda: runner.step(x, y))
    print(f"\noptimised {precision} step, batch {batch} (profiled: {took}):", flush=True)
    by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=by, row_limit=rows, max_name_column_width=40))
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        took = timed(lambda: runner.step(x, y))
    print(f"by shape, from another step profiled with its shapes ({took})")
    by_shape = prof.key_averages(group_by_input_shape=True)
    for op, what in (
        ("aten::copy_", "shape"),
        ("aten::mkldnn_convolution", "input, weight"),
        ("aten::convolution_backward", "grad_output, input, weight"),
    ):
        events = sorted((e for e in by_shape if e.key == op), key=lambda e: -e.self_cpu_time_total)
        print(f"largest {op} by shape: self ms, calls, {what}")
        for e in events[:8]:
            shapes = e.input_shapes[: len(what.split(", "))]
            print(f"  {e.self_cpu_time_total / 1e3:8.1f} {e.count:6d}  {', '.join(map(str, shapes))}")


def inputs(cfg: Config, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random inputs and targets on ``device``, seeded by the batch size and drawn on the CPU, so that
    every device gets the same numbers."""
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, cfg.model.in_frames, len(cfg.model.variables), *cfg.model.grid, generator=g)
    y = torch.randn(batch, cfg.model.out_frames, len(cfg.model.variables), *cfg.model.grid, generator=g)
    return x.to(device), y.to(device)


def machine(device: torch.device) -> str:
    """What the step runs on: the CPU and oneDNN's kernels, or the GPU, its CUDA and cuDNN and the TF32 settings."""
    if device.type != "cuda":
        return f"CPU: {cpu_model()}\n{onednn_kernels()}"
    props = torch.cuda.get_device_properties(device)
    return (
        f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
        f"{props.multi_processor_count} multiprocessors; CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}; fp32 steps and products timed with TF32 as training leaves it (cuDNN "
        f"{torch.backends.cudnn.allow_tf32}, matmul {torch.backends.cuda.matmul.allow_tf32}), the first steps' "
        "check without TF32"
    )


def datasheet_peak(device: torch.device, precision: str) -> float | None:
    """The GPU's dense peak in GFLOP/s from its vendor's data sheet (tools/gpu_smoke_report.py's table: bf16, or
    TF32 for fp32), None on the CPU or for a GPU the table does not know."""
    if device.type != "cuda":
        return None
    sys.path.insert(0, str(ROOT / "tools"))
    from gpu_smoke_report import datasheet_tflops

    tflops = datasheet_tflops(torch.cuda.get_device_name(device), precision)
    return tflops * 1e3 if tflops else None


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/mv5_5.625.yaml"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (the first visible GPU by default)")
    ap.add_argument("--profile", action="store_true", help="where the optimised step's time goes, instead")
    ap.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's malloc as it is (training keeps freed memory)"
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch {torch.__version__} finds no GPU (a CPU build, or none visible)"
        )
    kept = not args.default_malloc and keep_freed_memory()
    precisions = [p for p in DTYPES if p == "fp32" or p in args.precisions]  # the literal fp32 step is the yardstick
    cfg = load_config(args.config, ["model.drop_path=0"])  # deterministic, so the check is exact
    torch.manual_seed(0)
    base = Met2Net(cfg.model)
    if args.profile:
        for batch in args.batches:
            for precision in args.precisions:
                profile(base, cfg, batch, precision, device)
        return
    print(machine(device), flush=True)
    necessary = implicit_step_flops(cfg.model)
    macs = implicit_step_macs(cfg.model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cfg.model.grid} grid, "
        f"{len(cfg.model.variables)} variables, {cfg.model.in_frames} → {cfg.model.out_frames} frames; freed host "
        f"memory kept (training.keep_host_memory): {kept}; necessary work "
        f"{necessary / 1e9:.1f} GFLOP per sample ("
        + ", ".join(f"{k} {2 * v / 1e9:.1f}" for k, v in macs.items())
        + ")",
        flush=True,
    )
    datasheet = {p: datasheet_peak(device, p) for p in precisions}
    step_rows, peak_rows, split_rows = [], [], []
    for batch in args.batches:
        x, y = inputs(cfg, batch, device)
        peaks = Peaks(cfg, batch, precisions, device)
        before = peaks.measure()
        group = runners(base, cfg, args.precisions, device)
        checks = first_steps(group, x, y)
        timed = timed_steps(group, x, y, args.steps, peaks, necessary * batch)
        after = peaks.measure()
        for label in before:
            peak_rows.append([batch, label, *[f"{before[label][p]:.0f} / {after[label][p]:.0f}" for p in precisions]])
        lit_fp32 = timed[("literal", "fp32")]["seconds"]
        for (step, precision), t in timed.items():
            c = checks[(step, precision)]
            rate = necessary * batch / t["seconds"] / 1e9
            step_rows.append(
                [
                    batch,
                    precision,
                    step,
                    f"{t['seconds']:.3f}",
                    f"{batch / t['seconds']:.3f}",
                    f"{lit_fp32 / t['seconds']:.2f}×",
                    f"{rate:.0f}",
                    f"{100 * t['of_shape']:.0f} %",
                    f"{100 * t['of_square']:.0f} %",
                    f"{c['flops'] / 1e9:.1f}",
                    f"{c['loss_rel']:.1e}",
                    f"{c['grad_rel']:.1e}",
                ]
            )
            if device.type == "cuda":
                peak = datasheet[precision]
                step_rows[-1] += [f"{100 * rate / peak:.1f} %" if peak else "n/a", f"{t['memory'] / 2**30:.2f}"]
            split_rows.append(
                [batch, precision, step]
                + [
                    f"{t[part]:.4f} ({100 * t[part] / t['seconds']:.0f} %)"
                    for part in ("forward", "backward", "optimizer")
                ]
            )
            print(" | ".join(map(str, step_rows[-1])), flush=True)
    print("\nmatrix-product rates, GFLOP/s, best of 5 before / after the steps\n")
    print(table(["batch", "product", *precisions], peak_rows))
    print(
        "\nsteps: median s/step; GFLOP/s of the necessary work; median of its ratio to the best Translator-shape and "
        "the square product rates averaged over as long right after each step"
        + (
            "; MFU: the necessary work against the data sheet's dense peak (TF32 for fp32)"
            if device.type == "cuda"
            else ""
        )
        + "\n"
    )
    header = [
        "batch",
        "precision",
        "step",
        "s/step",
        "samples/s",
        "vs literal fp32",
        "GFLOP/s",
        "% of shape peak",
        "% of square peak",
        "counted GFLOP/sample",
        "loss rel. diff",
        "grad rel. diff",
    ]
    if device.type == "cuda":
        header += ["MFU", "peak memory GiB"]
    print(table(header, step_rows))
    print("\nstep-time split: median seconds of each part (and its share of the step), each part ended by a sync\n")
    print(table(["batch", "precision", "step", "forward", "backward", "optimizer"], split_rows))


if __name__ == "__main__":
    main()
