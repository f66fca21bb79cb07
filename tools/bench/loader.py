"""Loader throughput against a raw read of the same bytes and against the training step's consumption.

Writes one year of synthetic hourly shards (mv5 5.625°: 5 variables, 32×64) into a temporary
directory, then measures side by side in one run, on shuffled 12 → 12 windows in batches of 16:

- raw: `ShardReader.read` of random 24-frame windows in this process (h5py, page cache);
- loader: `ShardWindowDataset` + `ShardedSampler` through `batch_loader` (the training loop's
  DataLoader) with 0, 1, 2 workers, delivering normalised float32 batches ready for the model;
- step: samples/s of the optimised training step (as `tools/bench/step.py`, fp32, channels-last).

    .venv/bin/python tools/bench/loader.py [--batches 200] [--workers 0 1 2] [--step-batch 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from met2net.config import load_config
from met2net.data.sampler import ShardedSampler
from met2net.data.shards import ShardMeta, ShardReader, shard_entry, write_index, write_shard
from met2net.data.synthetic import VARIABLES, generate
from met2net.data.windows import ShardWindowDataset, batch_loader
from met2net.model.met2net import Met2Net
from met2net.training.stages import Implicit

ROOT = Path(__file__).resolve().parents[2]
T_IN = T_OUT = 12
BATCH = 16


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


def raw_rate(directory: Path, windows: int) -> float:
    reader = ShardReader(directory)
    starts = np.random.default_rng(0).integers(0, len(reader) - T_IN - T_OUT, windows)
    reader.read(0, T_IN + T_OUT)
    tic = time.perf_counter()
    for s in starts:
        reader.read(int(s), T_IN + T_OUT)
    return windows / (time.perf_counter() - tic)


def loader_rate(directory: Path, workers: int, batches: int) -> float:
    dataset = ShardWindowDataset(directory, [2010], T_IN, T_OUT, 1, mean=np.zeros(5), std=np.ones(5))
    sampler = ShardedSampler(len(dataset), rank=0, world_size=1, seed=0)
    loader = batch_loader(dataset, sampler, BATCH, drop_last=True, num_workers=workers)
    it = iter(loader)
    for _ in range(max(2, workers * 2)):  # warm-up: workers started, files opened
        next(it)
    tic = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
    return batches * BATCH / (time.perf_counter() - tic)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200, help="timed batches per loader variant")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--step-batch", type=int, default=2, help="batch of the training-step measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_year(directory)
        raw = raw_rate(directory, args.batches * BATCH)
        step = step_rate(args.step_batch)
        print(f"raw 24-frame window reads: {raw:,.0f} windows/s; training step (fp32, 1 process): {step:.2f} samples/s")
        print("\n| workers | loader samples/s | vs raw read | vs training step |\n|---|---|---|---|")
        for w in args.workers:
            rate = loader_rate(directory, w, args.batches)
            print(f"| {w} | {rate:,.0f} | {rate / raw:.0%} | {rate / step:,.0f}× |", flush=True)


if __name__ == "__main__":
    main()
