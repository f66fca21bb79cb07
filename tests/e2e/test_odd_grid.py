"""A grid that is no multiple of the encoder's downsampling (33×36 with N_S = 4: factor 4) end to end: netCDF →
shards → stats → train → evaluate → predict, every output on the user's own grid."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from met2net.data.netcdf import write_weatherbench_tree

ROOT = Path(__file__).resolve().parents[2]
GRID = (33, 36)
SETTINGS = [
    "model.in_frames=2",
    "model.out_frames=2",
    "model.hid_s=4",
    "model.hid_t=16",
    f"model.grid=[{GRID[0]},{GRID[1]}]",
    "model.num_spatial_layers=4",
    "model.num_translator_blocks=1",
    "data.train_years=[2010]",
    "data.val_years=[2011]",
    "data.test_years=[2012]",
    "data.step_hours=24",
]


def met2net(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "met2net.cli", *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.slow
def test_an_odd_grid_converts_trains_evaluates_and_predicts(tmp_path):
    write_weatherbench_tree(tmp_path / "nc", [2010, 2011, 2012], grid=GRID, hours=24 * 30)
    shards, config, run = tmp_path / "shards", str(ROOT / "configs/quickstart.yaml"), tmp_path / "run"
    data = [*SETTINGS, "data.source=shards", f"data.path={shards}"]
    met2net("data", "convert", str(tmp_path / "nc"), "-c", config, "-o", str(shards), *data)
    met2net("data", "stats", str(shards), "--train-years", "2010")
    train = ["training.max_steps=2", "training.batch_size=2", "training.progress=false", f"run.dir={run}"]
    met2net("train", config, "training.schedule=end_to_end", *train, *data)
    out = met2net("evaluate", str(run), "-o", str(tmp_path / "ev"), "--climatology-window", "200", *data)
    assert "persistence" in out.stdout
    doc = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert doc["lead_hours"] == [24, 48]
    assert (tmp_path / "ev/plots").is_dir()
    met2net("predict", str(run), "--init", "2012-01-10T00", "-o", str(tmp_path / "f.nc"), *data)
    ds = xr.open_dataset(tmp_path / "f.nc")
    assert ds["t2m"].shape == (1, 2, *GRID)
    assert ds["lat"].size == GRID[0] and ds["lon"].size == GRID[1]
