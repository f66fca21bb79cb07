"""The main job's data path end to end, as the quick start runs it: netCDF → shards → stats → train."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from met2net.data.netcdf import write_weatherbench_tree

ROOT = Path(__file__).resolve().parents[2]
MODEL = [
    "model.in_frames=2",
    "model.out_frames=2",
    "model.hid_s=4",
    "model.hid_t=16",
    "model.grid=[16,32]",
    "model.num_translator_blocks=1",
]


def met2net(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "met2net.cli", *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.slow
def test_netcdf_to_shards_to_training(tmp_path):
    write_weatherbench_tree(tmp_path / "nc", [2010, 2011], grid=(16, 32), hours=24 * 10)
    shards, config = tmp_path / "shards", str(ROOT / "configs/quickstart.yaml")
    data = [f"data.path={shards}", "data.train_years=[2010]", "data.val_years=[2011]", "data.test_years=[]"]
    data += ["data.step_hours=6"]
    met2net("data", "convert", str(tmp_path / "nc"), "-c", config, "-o", str(shards), *MODEL, *data)
    assert sorted(p.name for p in shards.iterdir()) == ["2010.h5", "2011.h5", "index.json"]
    out = met2net("data", "stats", str(shards), "--train-years", "2010")
    assert "t2m" in out.stdout and (shards / "stats.json").exists()
    run = tmp_path / "run"
    train = [
        "training.max_steps=4",
        "training.batch_size=4",
        "training.val_every=4",
        "training.progress=false",
        f"run.dir={run}",
        *MODEL,
        *data,
    ]
    met2net("train", config, "training.schedule=stage1", *train)
    met2net("train", config, "training.schedule=stage2", *train)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["split"] == "start")
    assert start["train_windows"] == 10 * 4 - 3  # 6-hourly frames of 10 days, windows of 4 frames
    meta = json.loads((run / "checkpoints/stage2/step_4/meta.json").read_text())
    stats = json.loads((shards / "stats.json").read_text())
    assert meta["stats"]["mean"] == stats["mean"] and meta["sampler"]["position"] == 16
