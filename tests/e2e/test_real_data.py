"""Real data end to end: NCEP/NCAR Reanalysis 1 monthly air temperature (air.mon.mean.nc, 73 × 144 with both poles,
monthly from 1948, fetched by scripts/fetch_real_data.sh) → shards → statistics equal to numpy on the source →
a short training run → evaluation whose persistence and climatology scores equal numpy on the source."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[2]
SHA256 = "57ffdc5f0b57fde8abe28a838b252455307aa0c6de0846b8f3233fb44de57493"
CACHE = Path(
    os.environ.get("MET2NET_DATA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "met2net"
)
SOURCE = CACHE / "ncep_reanalysis1/air.mon.mean.nc"
TRAIN, VAL, TEST = list(range(1948, 1988)), [1988, 1989, 1990], [1991, 1992, 1993, 1994, 1995]
IN, OUT = 3, 3
SETTINGS = [
    f"data.train_years={TRAIN}".replace(" ", ""),
    f"data.val_years={VAL}".replace(" ", ""),
    f"data.test_years={TEST}".replace(" ", ""),
    f"model.in_frames={IN}",
    f"model.out_frames={OUT}",
    "model.hid_s=8",
    "model.hid_t=16",
    "model.num_translator_blocks=1",
]


def met2net(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "met2net.cli", *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def source() -> Path:
    if os.environ.get("MET2NET_REAL_DATA") == "0":
        pytest.skip("MET2NET_REAL_DATA=0: the real reanalysis was not fetched (scripts/fetch_real_data.sh)")
    assert SOURCE.is_file(), f"{SOURCE} is missing: run scripts/fetch_real_data.sh (scripts/setup.sh does)"
    assert hashlib.sha256(SOURCE.read_bytes()).hexdigest() == SHA256, f"{SOURCE}: sha256 differs from {SHA256}"
    return SOURCE


def years_of(da: xr.DataArray, years: list[int]) -> np.ndarray:
    """(time, lat, lon) float64 of ``years``, latitude ascending as the shards hold it."""
    return da.sel(time=da["time"].dt.year.isin(years)).values[:, ::-1].astype(np.float64)


@pytest.mark.slow
def test_ncep_monthly_air_temperature_converts_trains_and_is_scored_against_persistence(source, tmp_path):
    shards, run, ev = tmp_path / "shards", tmp_path / "run", tmp_path / "ev"
    config = str(ROOT / "configs/ncep_air_monthly.yaml")
    data = [*SETTINGS, f"data.path={shards}"]
    met2net("data", "convert", str(source.parent), "-c", config, "-o", str(shards), *data)
    index = json.loads((shards / "index.json").read_text())
    assert index["time_step_months"] == 1 and len(index["lat"]) == 73 and len(index["lon"]) == 144
    assert index["lat"][0] == -90.0 and index["lat"][-1] == 90.0  # made ascending, both poles kept
    assert [e["num_times"] for e in index["shards"]] == [12] * len(TRAIN + VAL + TEST)

    met2net("data", "stats", str(shards), "--train-years", f"{TRAIN[0]}-{TRAIN[-1]}")
    stats = json.loads((shards / "stats.json").read_text())
    with xr.open_dataset(source) as ds:
        air = ds["air"].load()
    train = years_of(air, TRAIN)
    np.testing.assert_allclose(stats["mean"], [train.mean()], rtol=1e-12)
    np.testing.assert_allclose(stats["std"], [train.std()], rtol=1e-12)
    assert stats["min"] == [train.min()] and stats["max"] == [train.max()] and stats["count"] == [train.size]

    train_args = ["training.max_steps=60", "training.batch_size=4", "training.val_every=60", "training.lr=3e-3"]
    met2net("train", config, *data, *train_args, f"run.dir={run}", "training.progress=false")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0], losses

    met2net("evaluate", str(run), "-o", str(ev), "--no-plots", *data)
    doc = json.loads((ev / "metrics.json").read_text())
    assert doc["lead_months"] == [1, 2, 3]
    test = years_of(air, TEST)
    starts = range(len(test) - IN - OUT + 1)
    assert doc["forecasts"] == len(starts)
    last = np.stack([test[s + IN - 1] for s in starts])
    truth = np.stack([test[s + IN : s + IN + OUT] for s in starts])  # (window, lead, lat, lon)
    persistence = ((truth - last[:, None]) ** 2).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(np.array(doc["metrics"]["persistence"]["mse"])[:, 0], persistence, rtol=1e-5)
    by_month = train.reshape(len(TRAIN), 12, 73, 144).mean(axis=0)  # the climatology: by month of year
    months = np.array([[(s + IN + k) % 12 for k in range(OUT)] for s in starts])  # TEST starts in January
    climatology = ((by_month[months] - truth) ** 2).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(np.array(doc["metrics"]["climatology"]["mse"])[:, 0], climatology, rtol=1e-5)
    assert np.isfinite(doc["metrics"]["met2net"]["rmse_w"]).all()
