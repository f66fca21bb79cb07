"""The Python half of tools/gpu_smoke.sh: is there a GPU, how many FLOPs one training sample costs, and one table
row per trained configuration from its metrics.jsonl.

    python tools/gpu_smoke_report.py gpus                  # "<count> <why none>" (count 0: the reason follows)
    python tools/gpu_smoke_report.py flops CONFIG [k=v...]  # model FLOPs per sample of the training step
    python tools/gpu_smoke_report.py row RUN_DIR NAME FLOPS_PER_SAMPLE
    python tools/gpu_smoke_report.py resumed RUN_DIR STEPS  # exit 1 unless the second start resumed at STEPS

MFU is the model's FLOPs per second (counted by torch's FlopCounterMode over one implicit step, forward and
backward, at the config's micro-batch) divided by the GPU's dense tensor-core peak from its vendor's data sheet:
bf16 runs against the bf16 peak, fp32 runs against the TF32 peak (cuDNN runs convolutions in TF32 unless told not
to). Set PEAK_TFLOPS_BF16 / PEAK_TFLOPS_FP32 for a GPU the table does not know.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

# dense tensor-core peaks in TFLOPS from the vendors' data sheets (not measured here): (tf32, bf16)
PEAKS = (
    ("H100 PCIe", (378.0, 756.0)),
    ("H100", (494.7, 989.4)),  # SXM
    ("H200", (494.7, 989.4)),
    ("GH200", (494.7, 989.4)),
    ("A100", (156.0, 312.0)),
)
WARMUP_STEPS = 5  # steps left out of samples/s: kernel selection, allocator growth


def gpus() -> int:
    try:
        import torch
    except ImportError as e:
        print(f"0 torch does not import ({e})")
        return 0
    if torch.version.cuda is None:
        print(f"0 torch {torch.__version__} is a CPU build (install a CUDA wheel: TORCH_INDEX_URL in README.md)")
    elif not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        print(f"0 torch.cuda finds no usable GPU (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})")
    else:
        print(torch.cuda.device_count())
    return 0


def flops(config: str, overrides: list[str]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from met2net.config import load_config
    from met2net.model.met2net import Met2Net
    from met2net.training.precision import autocast
    from met2net.training.stages import make_schedule

    cfg = load_config(config, overrides)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")  # the count is the same
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model, with_copies=schedule.needs_copies)
    schedule.configure(model)
    model.to(device)
    batch = cfg.training.batch_size
    x = torch.randn(batch, cfg.model.in_frames, len(cfg.model.variables), *cfg.model.grid, device=device)
    y = torch.randn(batch, cfg.model.out_frames, len(cfg.model.variables), *cfg.model.grid, device=device)
    with FlopCounterMode(display=False) as counter:
        with autocast(cfg.training.precision, device):
            out = schedule.forward(model, x, y)
        out.loss.backward()
    print(counter.get_total_flops() / batch)
    return 0


def _segments(run_dir: Path) -> list[list[dict]]:
    """metrics.jsonl split into one list per run (or resumed run) of the directory: a run opens with its start
    record, or, when it resumed, with the resume record that the trainer logs just before its start record."""
    runs: list[list[dict]] = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        resumed_start = record["split"] == "start" and runs and [r["split"] for r in runs[-1]] == ["resume"]
        if record["split"] == "resume" or (record["split"] == "start" and not resumed_start):
            runs.append([])
        if runs:
            runs[-1].append(record)
    return runs


def datasheet_tflops(gpu: str, precision: str) -> float | None:
    override = os.environ.get("PEAK_TFLOPS_BF16" if precision == "bf16" else "PEAK_TFLOPS_FP32")
    if override:
        return float(override)
    if "NVL" in gpu:
        return None  # NVL parts have their own, lower peaks
    for name, (tf32, bf16) in PEAKS:
        if name in gpu:
            return bf16 if precision == "bf16" else tf32
    return None


def row(run_dir: str, name: str, flops_per_sample: str) -> int:
    first = _segments(Path(run_dir))[0]
    start = first[0]["startup"]
    ranks = start["ranks"]
    train = [r for r in first if r["split"] == "train" and r["step"] > WARMUP_STEPS]
    if not train:
        print(f"| {name} | no train records after step {WARMUP_STEPS} | | | |")
        return 1
    rate = statistics.median(r["samples_per_s"] for r in train)
    peak_mem = max(r.get("peak_memory_gib", 0.0) for r in train)
    gpu = ranks[0].get("gpu", "?")
    peak = datasheet_tflops(gpu, start["precision"])
    model_tflops = rate * float(flops_per_sample) / 1e12
    mfu = f"{100 * model_tflops / (peak * len(ranks)):.1f} %" if peak else "n/a (set PEAK_TFLOPS_*)"
    devices = ", ".join(f"{r['rank']}→{r['host']}:{r['device']}" for r in ranks)
    print(
        f"| {name} | {len(ranks)} × {gpu} ({devices}) | {rate:.1f} | {model_tflops:.2f} TFLOP/s, {mfu} | "
        f"{peak_mem:.2f} GiB |"
    )
    return 0


def resumed(run_dir: str, steps: str) -> int:
    """The second run of the directory resumed from the first one's last checkpoint and trained on from there."""
    runs = _segments(Path(run_dir))
    if len(runs) < 2:
        print(f"{run_dir}: one start record only: the resumed run did not start")
        return 1
    again = runs[1]
    resume = next((r for r in again if r["split"] == "resume"), None)
    first_step = next((r["step"] for r in again if r["split"] == "train"), None)
    if resume is None or first_step != int(steps) + 1:
        print(f"{run_dir}: expected a resume from step {steps}; got {resume} and a first train step {first_step}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    commands = {"gpus": gpus, "flops": lambda c, *o: flops(c, list(o)), "row": row, "resumed": resumed}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
