"""Loader throughput against a raw read of the same bytes and against the training step's consumption.

Writes one year of synthetic hourly shards (mv5 5.625°: 5 variables, 32×64) into a temporary
directory, then measures side by side in one run, on shuffled 12 → 12 windows in batches of 16:

- raw: `ShardReader.read` of random 24-frame windows in this process, one array per window (the
  yardstick of issue 17; malloc hands back the same ~1 MB block every time, so it stays in cache);
- raw into batches: the same reads into one (16, 24, C, H, W) array per batch, no normalisation:
  what any loader that hands over a fresh batch must at least do;
- raw loader: `ShardWindowDataset(normalise=False)` + `ShardedSampler` through `batch_loader` (the
  training loop's DataLoader) with 0, 1, 2 … workers, delivering raw float32 batches: a GPU's training
  loop normalises them on the device (`met2net/training/hot_path.py: to_device`);
- raw loader + normalisation by torch (0 workers): the same, then x and y normalised on the CPU as
  `to_device` would: what normalising on the device costs where the device is the CPU;
- normalising loader (0 workers): the dataset normalising each window on its way into the batch, the CPU
  training loop's loader (checked against the raw batch normalised by torch: the same bits).
- step: samples/s of the optimised training step (as `tools/bench/step.py`, fp32, channels-last).

The variants take turns, a block of batches each, for several rounds, so that a load that changes
during the run (a shared machine) hits them alike; ratios are taken within each round, and the
medians over rounds are printed. Each block's first batch is untimed (after another variant's
allocations, malloc may hand back fresh pages that fault in: 3,000 faults per batch measured), and
so are the batches a worker variant has waiting; after its block, the bench sleeps while the
workers refill their prefetch queues, so that they do not slow down the next variant. The process keeps freed
memory mapped, as training does (`training.keep_host_memory`), unless ``--default-malloc``.

    .venv/bin/python tools/bench/loader.py [--batches 20] [--rounds 5] [--workers 0 1 2] [--step-batch 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from met2net.config import load_config
from met2net.data.sampler import ShardedSampler
from met2net.data.shards import ShardMeta, ShardReader, shard_entry, write_index, write_shard
from met2net.data.synthetic import VARIABLES, generate
from met2net.data.windows import ShardWindowDataset, batch_loader
from met2net.model.met2net import Met2Net
from met2net.training.host_memory import keep_freed_memory
from met2net.training.hot_path import to_device
from met2net.training.stages import Implicit

ROOT = Path(__file__).resolve().parents[2]
T_IN = T_OUT = 12
BATCH = 16
PREFETCH = 2  # DataLoader's default prefetch_factor: batches each worker has ready
# The fastest training step docs/performance.md records for this model on a CPU: AMD EPYC family 26 (Zen 5),
# optimised bf16, batch 2, 1.374 s/step (session 13; before: Intel Xeon, optimised fp32, batch 4, 6.405 s/step).
FASTEST_DOCUMENTED_STEP = 2 / 1.374  # samples/s


def write_year(directory: Path, year: int = 2010) -> None:
    names = list(VARIABLES)
    f = generate([year], grid=(32, 64), variables=names)
    meta = ShardMeta(
        channels=names,
        units=[VARIABLES[n]["units"] for n in names],
        long_names=[VARIABLES[n]["long_name"] for n in names],
        levels=[VARIABLES[n]["level"] or -1 for n in names],
        lat=f.lat,
        lon=f.lon,
    )
    fields = np.stack([f.fields[n] for n in names], axis=1)
    path = directory / f"{year}.h5"
    write_index(directory, meta, 1, [shard_entry(path, f.time, write_shard(path, f.time, fields, meta))])


def dataset(directory: Path, normalise: bool) -> ShardWindowDataset:
    rng = np.random.default_rng(1)  # statistics that make every division round, as real ones do
    mean, std = rng.normal(size=5) * 100, rng.uniform(0.3, 30, size=5)
    return ShardWindowDataset(directory, [2010], T_IN, T_OUT, 1, mean=mean, std=std, normalise=normalise)


def batches(ds: ShardWindowDataset, workers: int, on_cpu: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of a seeded shuffle (one DataLoader iterator per epoch; persistent workers); ``on_cpu``:
    normalised as the training loop does on a CPU device."""
    sampler = ShardedSampler(len(ds), rank=0, world_size=1, seed=0)
    loader = batch_loader(ds, sampler, BATCH, drop_last=True, num_workers=workers)
    cpu = torch.device("cpu")
    for epoch in range(1 << 30):
        sampler.set_epoch(epoch)
        for x, y in loader:
            yield (to_device(x, cpu, ds.normalise), to_device(y, cpu, ds.normalise)) if on_cpu else (x, y)


def raw_windows(reader: ShardReader, starts: np.ndarray) -> None:
    for s in starts:
        reader.read(int(s), T_IN + T_OUT)


def raw_batch(reader: ShardReader, starts: np.ndarray) -> np.ndarray:
    out = torch.empty((len(starts), T_IN + T_OUT, *reader.meta.shape)).numpy()  # allocated as the loader does
    for b, s in enumerate(starts):
        reader.read(int(s), T_IN + T_OUT, out=out[b])
    return out


def step_rate(batch: int) -> float:
    cfg = load_config(ROOT / "configs/mv5_5.625.yaml", ["model.drop_path=0"])
    model = Met2Net(cfg.model).to(memory_format=torch.channels_last)
    schedule = Implicit(cfg)
    schedule.configure(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(batch, T_IN, 5, 32, 64)
    times = []
    for _ in range(2):
        tic = time.perf_counter()
        out = schedule.forward(model, x, x)
        out.loss.backward()
        schedule.after_backward(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - tic)
    return batch / times[-1]


def batch_memory_ms(shared: bool, repeat: int = 10) -> float:
    """Median ms to allocate one batch and write every byte of it: in shared memory (what a DataLoader worker
    hands to the main process: a new segment per batch) or private memory (what the main process allocates)."""
    shape = (BATCH, T_IN + T_OUT, 5, 32, 64)
    fill = np.ones(shape, dtype=np.float32)
    times = []
    for _ in range(repeat + 1):
        tic = time.perf_counter()
        if shared:
            storage = torch.empty(0)._typed_storage()._new_shared(fill.size)
            batch = torch.empty(0).new(storage).view(shape)
        else:
            batch = torch.empty(shape)
        batch.numpy()[:] = fill
        times.append(time.perf_counter() - tic)
        del batch
    return statistics.median(times[1:]) * 1e3


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    cores = os.cpu_count() or 1
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[w for w in (0, 1, 2, 4) if w <= cores], help="(default: ≤ cores)"
    )
    ap.add_argument("--step-batch", type=int, default=1, help="batch of the training-step measurement (0: skip)")
    ap.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's malloc as it is (training keeps freed memory)"
    )
    args = ap.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    print(
        f"{platform.processor() or platform.machine()}, {cores} cores; load average before: {loadavg()}; freed host "
        f"memory kept (training.keep_host_memory): {kept}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_year(directory)
        reader = ShardReader(directory)
        plain, normalising = dataset(directory, normalise=False), dataset(directory, normalise=True)
        probe = ShardedSampler(len(plain), 0, 1, seed=0).indices()[:BATCH].tolist()
        same = all(torch.equal(plain.normalise(a), b) for a, b in zip(plain[probe], normalising[probe]))
        print(f"the raw batch normalised by torch equals the normalising loader's, bit for bit: {same}")
        rng = np.random.default_rng(0)

        def reads(fn: Callable[[ShardReader, np.ndarray], object]) -> Callable[[], float]:
            def block() -> float:
                starts = rng.integers(0, len(reader) - T_IN - T_OUT, (args.batches + 1, BATCH))
                fn(reader, starts[0])  # untimed, as each loader block's first batch
                tic = time.perf_counter()
                for row in starts[1:]:
                    fn(reader, row)
                return args.batches * BATCH / (time.perf_counter() - tic)

            return block

        def loads(ds: ShardWindowDataset, workers: int, on_cpu: bool = False) -> Callable[[], float]:
            it = batches(ds, workers, on_cpu)
            for _ in range(max(2, workers * PREFETCH)):  # warm-up: workers started, files opened
                next(it)

            def block() -> float:
                for _ in range(workers * PREFETCH + 1):  # those ready while other variants ran, and one more
                    next(it)
                tic = time.perf_counter()
                for _ in range(args.batches):
                    next(it)
                took = time.perf_counter() - tic
                # the workers now refill their prefetch queues: let them, rather than slow down the next variant
                time.sleep(2 * PREFETCH * workers * took / args.batches)
                return args.batches * BATCH / took

            return block

        variants = {"raw": reads(raw_windows), "raw into batches": reads(raw_batch)}
        variants["normalising loader, 0 workers"] = loads(normalising, 0)
        variants["raw loader + normalisation by torch, 0 workers"] = loads(plain, 0, on_cpu=True)
        variants.update({f"raw loader, {w} workers": loads(plain, w) for w in args.workers})
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, block in variants.items():
                rates[name].append(block())
        print(f"load average after: {loadavg()}")
        shm, private = batch_memory_ms(True), batch_memory_ms(False)

    def median(name: str, over: str | None = None) -> float:
        base = rates[over] if over else [1.0] * args.rounds
        return statistics.median(a / b for a, b in zip(rates[name], base))

    raw = median("raw")
    print(
        f"\nmedians over {args.rounds} rounds of {args.batches} batches of {BATCH}; ratios within each round. "
        f"raw: {raw:,.0f} windows/s; fastest documented training step: {FASTEST_DOCUMENTED_STEP:.2f} samples/s\n"
    )
    print(
        "| variant | samples/s | per worker | vs raw | vs raw into batches | vs 1 worker | per worker vs fastest step |"
    )
    print("|---|---|---|---|---|---|---|")
    one = "raw loader, 1 workers" if "raw loader, 1 workers" in rates else None
    for name in rates:
        rate = median(name)
        workers = int(name.split(", ")[1].split()[0]) if "loader" in name else 0
        per = rate / max(workers, 1)
        scale = f"{median(name, one):.2f}×" if one and workers else ""
        fastest = f"{per / FASTEST_DOCUMENTED_STEP:,.0f}×" if "loader" in name else ""
        print(
            f"| {name} | {rate:,.0f} | {per:,.0f} | {median(name, 'raw'):.0%} | {median(name, 'raw into batches'):.0%} "
            f"| {scale} | {fastest} |",
            flush=True,
        )
    print(
        f"\none batch ({BATCH} windows, {BATCH * (T_IN + T_OUT) * 5 * 32 * 64 * 4 / 2**20:.1f} MiB) allocated and "
        f"written once: {shm:.1f} ms in shared memory (a worker's), {private:.1f} ms in private memory"
    )
    if args.step_batch:  # last: minutes on a loaded machine, and the table above does not need it
        step = step_rate(args.step_batch)
        fastest = max(median(name) / max(int(name.split(", ")[1].split()[0]), 1) for name in rates if "loader" in name)
        print(
            f"training step here (optimised fp32, batch {args.step_batch}): {step:.3f} samples/s; "
            f"the fastest loader per worker delivers {fastest / step:,.0f}× that",
            flush=True,
        )


if __name__ == "__main__":
    main()
