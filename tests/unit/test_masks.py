"""Missing values (met2net/data/masks.py): refused by default naming the file and variable; with a fill policy filled,
masked, and left out of the statistics, the loss and the metrics. Also: one conversion per shard directory at a time.

The source is a real monthly netCDF file whose "land" (a block of points) is NaN in every frame and one more point is
NaN in one frame only: both are masked."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

from met2net.config import ConfigError
from met2net.data import masks
from met2net.data.convert import convert
from met2net.data.datasets import build_splits
from met2net.data.reconvert import ConversionInProgress
from met2net.data.shards import read_index
from met2net.data.stats import compute_stats, write_stats
from met2net.errors import UserError
from met2net.evaluation.evaluate import evaluate
from met2net.evaluation.metrics import latitude_weights, score_sums
from met2net.evaluation.predict import predict
from met2net.model.met2net import Met2Net
from met2net.train import run_train
from met2net.training.stages import SCHEDULES
from tests.unit.test_monthly import GRID, cfg, monthly_file, months

ROOT = Path(__file__).resolve().parents[2]
LAND = (slice(0, 2), slice(0, 3))  # rows 0-1, columns 0-2 of the 6×8 grid: missing in every frame
ONCE = (7, 4, 6)  # (frame, row, column) missing in one frame of 2000 only


def land() -> np.ndarray:
    mask = np.zeros(GRID, dtype=bool)
    mask[LAND] = True
    return mask


def expected_valid() -> np.ndarray:
    """Shard order: latitude ascending (the file's runs 90 → -90), so source row i is shard row 5 - i."""
    missing = land()
    missing[ONCE[1:]] = True
    return ~missing[::-1]


@pytest.fixture
def source(tmp_path) -> Path:
    path = monthly_file(tmp_path / "nc/air.mon.mean.nc", months("2000-01-01", 48))
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    air = ds["air"].values
    air[:, land()] = np.nan
    air[ONCE] = np.nan
    ds["air"].values = air
    path.unlink()
    ds.to_netcdf(path)
    return path.parent


def shard(directory: Path, year: int) -> tuple[np.ndarray, np.ndarray | None]:
    with h5py.File(directory / f"{year}.h5") as f:
        return f["fields"][:, 0], (f["valid"][0].astype(bool) if "valid" in f else None)


def test_without_a_policy_missing_values_are_refused_naming_file_and_variable(source, tmp_path):
    with pytest.raises(
        UserError,
        match=r"air\.mon\.mean\.nc'\]: variable 'air' \(air\) has 73 missing \(NaN or inf\) values in 2000, in 12 of "
        r"12 frames.*nothing written\. Set a fill policy, e\.g\. data\.missing: \{air: mean\}",
    ):
        convert(source, cfg(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "index.json").exists() and not list((tmp_path / "out").glob("*.h5"))


def test_a_policy_must_be_known_and_name_a_model_variable():
    with pytest.raises(ConfigError, match=r"'data\.missing\.air' must be one of error, mean, zero or a number"):
        cfg("data.missing={air: average}")
    with pytest.raises(ConfigError, match=r"'data\.missing\.sst' is not in model\.variables \['air'\]"):
        cfg("data.missing={sst: mean}")


@pytest.mark.parametrize("policy", ["mean", "zero", "-999.5"])
def test_a_fill_policy_fills_and_records_one_mask(source, tmp_path, policy):
    out = tmp_path / "out"
    convert(source, cfg(f"data.missing={{air: {policy}}}"), out, progress=False)
    index = read_index(out)
    assert index["conversion"]["settings"]["data.missing"] == {"air": policy}
    assert index["mask"]["file"] == "mask.h5" and index["mask"]["masked_points"] == {"air": 7}
    np.testing.assert_array_equal(masks.read_mask(out, index)[0], expected_valid())
    with xr.open_dataset(source / "air.mon.mean.nc") as ds:
        raw = ds["air"].sel(time=slice("2000", "2000")).values[:, ::-1]  # shard order: latitude ascending
    fields, valid = shard(out, 2000)
    missing = np.isnan(raw)
    np.testing.assert_array_equal(fields[~missing], raw[~missing])
    if policy == "mean":
        want = np.nanmean(raw.astype(np.float64), axis=(1, 2))[:, None, None] * np.ones_like(raw)
        np.testing.assert_allclose(fields[missing], want[missing], rtol=1e-6)
    else:
        assert np.all(fields[missing] == float(policy if policy != "zero" else 0))
    assert valid is not None and not valid[GRID[0] - 1 - ONCE[1], ONCE[2]]
    _, valid_2001 = shard(out, 2001)  # the sometimes-missing point is 2000's alone; the mask is the union
    assert valid_2001.sum() == valid.sum() + 1
    # a mask file that no longer matches the index is an error naming it, not a silent unmasked run
    with h5py.File(out / "mask.h5", "r+") as f:
        f["valid"][0, 0, 0] = 1 - f["valid"][0, 0, 0]
    with pytest.raises(UserError, match=r"mask\.h5: does not match the checksum in index\.json; re-run"):
        masks.read_mask(out, index)


def test_two_mpi_ranks_write_the_same_masks(source, tmp_path):
    """Rank r writes every other year (the one-frame gap of 2000 on rank 0); rank 0 unites every shard's mask."""
    config = cfg("data.missing={air: zero}")
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    convert(source, config, tmp_path / "one", progress=False)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}
    mpirun = [str(Path(sys.executable).parent / "mpirun"), "-n", "2", sys.executable, "-m", "met2net.cli"]
    cmd = [*mpirun, "data", "convert", str(source), "-c", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "two")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "rank 1/2: wrote" in out.stderr
    one, two = read_index(tmp_path / "one"), read_index(tmp_path / "two")
    assert two["mask"]["masked_points"] == one["mask"]["masked_points"] == {"air": 7}
    np.testing.assert_array_equal(masks.read_mask(tmp_path / "two", two), masks.read_mask(tmp_path / "one", one))


def test_a_frame_missing_everywhere_is_refused_even_with_a_policy(source, tmp_path):
    path = source / "air.mon.mean.nc"
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    ds["air"][14] = np.nan  # March 2001
    path.unlink()
    ds.to_netcdf(path)
    with pytest.raises(UserError, match=r"missing at every point in 1 frame\(s\), the first at 2001-03-01T00:00"):
        convert(source, cfg("data.missing={air: zero}"), tmp_path / "out", progress=False)


@pytest.fixture
def masked(source, tmp_path) -> Path:
    out = tmp_path / "shards"
    convert(source, cfg("data.missing={air: zero}"), out, progress=False)
    write_stats(out, compute_stats(out, [2000, 2001]), ["air"], [2000, 2001])
    return out


def test_statistics_leave_masked_points_out(source, masked, tmp_path):
    with xr.open_dataset(source / "air.mon.mean.nc") as ds:
        raw = ds["air"].sel(time=slice("2000", "2001")).values.astype(np.float64)[:, ::-1]
    points = raw[:, expected_valid()]
    moments = compute_stats(masked, [2000, 2001])
    np.testing.assert_allclose(moments.mean, [points.mean()], rtol=1e-12)
    np.testing.assert_allclose(moments.std, [points.std()], rtol=1e-9)
    assert moments.count.tolist() == [points.size] and moments.min.tolist() == [points.min()]
    other = tmp_path / "other"  # another fill under the mask: the same statistics, to the bit
    convert(source, cfg("data.missing={air: 1e4}"), other, progress=False)
    assert compute_stats(other, [2000, 2001]).to_json() == moments.to_json()


def shard_cfg(masked: Path, *more: str):
    return cfg("data.source=shards", f"data.path={masked}", "data.missing={air: zero}", *more)


def test_the_loss_leaves_masked_points_out(masked):
    c = shard_cfg(masked)
    splits = build_splits(c)
    np.testing.assert_array_equal(splits.valid[0], expected_valid())
    x, y = (torch.as_tensor(a)[None] for a in splits.train[0])
    y_other = y.clone()
    y_other[..., ~torch.as_tensor(splits.valid)] += 100.0  # other values under the mask only
    model = Met2Net(c.model)
    for name in ("implicit", "stage1", "end_to_end"):
        schedule = SCHEDULES[name](c)
        schedule.use_mask(splits.valid, torch.device("cpu"))

        def losses(target: torch.Tensor, schedule=schedule) -> dict[str, float]:
            fresh = copy.deepcopy(model)  # a step moves the copies and the BatchNorm statistics
            torch.manual_seed(0)
            parts = schedule.forward(fresh, x, target).parts
            return {k: float(v) for k, v in {**parts, **schedule.validation_losses(fresh, x, target)}.items()}

        same, changed = losses(y), losses(y_other)
        pixel = [k for k in same if k in ("rec", "pred", "forecast_mse", "forecast_mse/air")]
        assert pixel and {k: same[k] for k in pixel} == {k: changed[k] for k in pixel}, name
        schedule.use_mask(None, torch.device("cpu"))  # without the mask the same change counts
        assert losses(y)["forecast_mse"] != losses(y_other)["forecast_mse"], name
    # the masked MSE is the mean over the valid points
    schedule = SCHEDULES["end_to_end"](c)
    schedule.use_mask(splits.valid, torch.device("cpu"))
    f = torch.randn_like(y)
    want = (f - y).square()[..., torch.as_tensor(splits.valid)].mean()
    torch.testing.assert_close(schedule.mse(f, y), want, rtol=1e-6, atol=0)


def test_metrics_leave_masked_points_out():
    rng = np.random.default_rng(0)
    f, o, c = (rng.normal(size=(3, 2, 1, *GRID)) for _ in range(3))
    valid = expected_valid()[None]
    w = latitude_weights(np.linspace(-90, 90, GRID[0]))
    o_other = o.copy()
    o_other[..., ~valid] += 50.0
    sums = score_sums(f, o, c, w, valid)[0]
    np.testing.assert_array_equal(score_sums(f, o_other, c, w, valid)[0], sums)
    assert not np.array_equal(score_sums(f, o_other, c, w)[0], score_sums(f, o, c, w)[0])
    se = ((f - o) ** 2)[..., valid[0]].mean(axis=-1).sum(axis=0)  # plain: the mean over the valid points
    np.testing.assert_allclose(sums[..., 0], se, rtol=1e-12)
    ww = np.broadcast_to(w[:, None], GRID)[valid[0]]
    se_w = (((f - o) ** 2)[..., valid[0]] * ww).sum(axis=-1).sum(axis=0) / ww.sum()
    np.testing.assert_allclose(sums[..., 2], se_w, rtol=1e-12)
    everything = score_sums(f, o, c, w, np.ones_like(valid))[0]  # an all-valid mask: the plain sums, to rounding
    np.testing.assert_allclose(everything, score_sums(f, o, c, w)[0], rtol=1e-14)


def test_training_and_evaluation_run_on_masked_shards(masked, tmp_path):
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    run = tmp_path / "run"
    train = ["training.max_steps=2", "training.batch_size=2", "training.progress=false", f"run.dir={run}"]
    try:
        assert run_train(shard_cfg(masked, *train)).finished
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    ev = evaluate(run, progress=False)
    table = ev.table()
    assert np.isfinite(table["met2net"]["rmse_w"]).all() and np.isfinite(table["persistence"]["mse"]).all()
    forecasts = predict(run, ["2003-06-01T00"])["air"].values  # (init, lead, lat, lon): NaN where masked
    np.testing.assert_array_equal(np.isnan(forecasts), np.broadcast_to(~expected_valid(), forecasts.shape))


def test_a_second_conversion_into_the_same_directory_is_refused_naming_the_holder(source, tmp_path):
    out = tmp_path / "out"
    holder = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from met2net.data.reconvert import ConvertLock
        ConvertLock(Path({str(out)!r})).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(
            ConversionInProgress, match=rf"is being written by another met2net data convert \(host .*, pid {proc.pid},"
        ):
            convert(source, cfg("data.missing={air: zero}"), out, progress=False)
        assert not out.exists()  # refused before anything was written
    finally:
        proc.kill()
        proc.wait()
    convert(source, cfg("data.missing={air: zero}"), out, progress=False)  # the lock went with its holder
    assert read_index(out)["mask"]["masked_points"] == {"air": 7}
    assert not (tmp_path / ".out.lock").exists()  # a finished conversion leaves no lock file behind
