"""Checkpoint consolidation: ``met2net consolidate`` against DeepSpeed's ``zero_to_fp32``, side by side in one run.

The same mv5 5.625° checkpoint (17.3 M parameters with the momentum copies), written by 2 ranks at ZeRO-3 and at
ZeRO-1, is consolidated by each tool's command line as a separate process: wall time (median of ``--repeat`` runs)
and peak RSS (``wait4``'s ``ru_maxrss`` of that process). Peak RSS is also given above each tool's start-up
(the same interpreter importing what the tool imports, then exiting), and ours against the fp32 bytes it writes.
Both write safetensors; ours with ``--weights all`` (everything DeepSpeed's writes, and at ZeRO-1 the frozen
momentum copies it leaves out) and, in a second row, ``--weights inference``.

    .venv/bin/python tools/bench/consolidate.py [--run-dir /tmp/met2net_bench_consolidate] [--repeat 3]

The checkpoints are trained once (1 implicit step, batch 2, synthetic data, ``torchrun`` 2 ranks) and reused when
``--run-dir`` already holds them.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
TRAIN = [
    "data.source=synthetic",
    "data.train_years=[2010]",
    "data.val_years=[2011]",
    "data.test_years=[]",
    "data.step_hours=24",
    "training.max_steps=1",
    "training.batch_size=2",
    "training.val_batches=1",
    "training.progress=false",
    "model.drop_path=0",
    "deepspeed.stage3_param_persistence_threshold=0",
]


def checkpoint(run_dir: Path, stage: int) -> Path:
    """The mv5 checkpoint of 2 ranks at ZeRO ``stage`` (trained here unless already there)."""
    run = run_dir / f"zero{stage}"
    ckpt = run / "checkpoints/implicit/step_1"
    if (ckpt / "COMPLETE").exists():
        return ckpt
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
    cmd += ["-m", "met2net.cli", "train", str(ROOT / "configs/mv5_5.625.yaml"), *TRAIN]
    cmd += [f"run.dir={run}", f"deepspeed.zero_stage={stage}"]
    tic = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training the ZeRO-{stage} checkpoint failed:\n{done.stderr[-3000:]}")
    print(f"trained the ZeRO-{stage} checkpoint in {time.perf_counter() - tic:.0f} s: {ckpt}")
    return ckpt


def measure(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one process."""
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - tic
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss * 1024  # kilobytes on Linux


def theirs_command(ckpt: Path, out: Path) -> list[str]:
    """DeepSpeed's converter by its command line. Its default 5 GB sharding needs huggingface_hub; without it the
    same function runs unsharded (what the command line does for a model under 5 GB)."""
    try:
        import huggingface_hub  # noqa: F401

        return [sys.executable, "-m", "deepspeed.utils.zero_to_fp32", str(ckpt.parent), str(out), "--tag", ckpt.name,
                "--safe_serialization"]  # fmt: skip
    except ImportError:
        code = (
            "import sys; from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict as c; "
            "c(sys.argv[1], sys.argv[2], max_shard_size=None, safe_serialization=True, tag=sys.argv[3])"
        )
        return [sys.executable, "-c", code, str(ckpt.parent), str(out), ckpt.name]


def ours_command(ckpt: Path, out: Path, weights: str) -> list[str]:
    return [sys.executable, "-m", "met2net.cli", "consolidate", str(ckpt), "-o", str(out), "--weights", weights]


BASELINE = {
    "ours": [sys.executable, "-c", "import met2net.cli, met2net.consolidate"],
    "theirs": [sys.executable, "-c", "import deepspeed.utils.zero_to_fp32, safetensors.torch"],
}


def run(cmd: list[str], out: Path, repeat: int) -> tuple[float, int]:
    times, peaks = [], []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = measure(cmd)
        times.append(wall)
        peaks.append(rss)
    return statistics.median(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/met2net_bench_consolidate"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}")
    base = {k: run(cmd, args.run_dir / "none", args.repeat) for k, cmd in BASELINE.items()}
    print(
        "start-up alone (import, exit): "
        + ", ".join(f"{k} {t:.2f} s, {r / 2**20:.0f} MiB" for k, (t, r) in base.items())
    )
    rows = []
    for stage in (3, 1):
        ckpt = checkpoint(args.run_dir, stage)
        their_out = args.run_dir / f"theirs{stage}"
        theirs = run(theirs_command(ckpt, their_out), their_out, args.repeat)
        for weights in ("all", "inference"):
            our_out = args.run_dir / f"ours{stage}_{weights}"
            ours = run(ours_command(ckpt, our_out, weights), our_out, args.repeat)
            rows.append(
                {
                    "case": f"ZeRO-{stage} 2 ranks, {weights}",
                    "read": sum(p.stat().st_size for p in ckpt.iterdir() if p.name.endswith("_states.pt")),
                    "ours": ours,
                    "theirs": theirs,
                    "written": (our_out / "model.safetensors").stat().st_size,
                    "their_written": sum(p.stat().st_size for p in their_out.glob("*.safetensors")),
                }
            )
    mib = 2**20
    print(
        f"\n{'checkpoint':<26} {'ours':>7} {'theirs':>7} {'ratio':>5} | {'peak RSS ours':>13} {'theirs':>7} "
        f"{'ratio':>5} | {'above start-up ours':>19} {'theirs':>7} {'ratio':>5} | {'written':>8} "
        f"{'RSS÷written':>11} {'above start-up÷written':>22}"
    )
    for r in rows:
        (t_o, r_o), (t_t, r_t) = r["ours"], r["theirs"]
        up_o, up_t = r_o - base["ours"][1], r_t - base["theirs"][1]
        print(
            f"{r['case']:<26} {t_o:>6.2f}s {t_t:>6.2f}s {t_o / t_t:>5.2f} | {r_o / mib:>9.0f} MiB "
            f"{r_t / mib:>3.0f} MiB {r_o / r_t:>5.2f} | {up_o / mib:>15.0f} MiB {up_t / mib:>3.0f} MiB "
            f"{up_o / max(up_t, 1):>5.2f} | "
            f"{r['written'] / mib:>4.1f} MiB {r_o / r['written']:>11.2f} {up_o / r['written']:>22.2f}"
        )
    print(
        "zero_to_fp32 wrote "
        + ", ".join(f"{r['their_written'] / mib:.1f} MiB ({r['case'][:6]})" for r in rows if r["case"].endswith("all"))
        + "; rank files read: "
        + ", ".join(f"{r['read'] / mib:.1f} MiB ({r['case'][:6]})" for r in rows if r["case"].endswith("all"))
    )


if __name__ == "__main__":
    main()
