"""Evaluation: every metric against hand-computed cases and an independent numpy implementation, the baselines
against the data themselves, rollout, outputs, the CF netCDF file and the errors a user can run into."""

from __future__ import annotations

import copy
import csv
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from met2net.cli import build_parser, main
from met2net.config import ConfigError, load_config
from met2net.data import synthetic
from met2net.errors import UserError
from met2net.evaluation.climatology import Climatology, calendar_index
from met2net.evaluation.evaluate import evaluate, forecast
from met2net.evaluation.metrics import latitude_weights, score_sums, scores
from met2net.evaluation.predict import predict
from met2net.evaluation.report import write_outputs, write_plots
from met2net.evaluation.source import load_source
from met2net.train import run_train
from tests.e2e.test_train_cli import ROOT, TINY

RUN = [*TINY, "training.schedule=implicit", "training.max_steps=4", "training.progress=false", "data.test_years=[2012]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    path = tmp_path_factory.mktemp("eval") / "run"
    assert run_train(load_config(ROOT / "configs/quickstart.yaml", [*RUN, f"run.dir={path}"])).finished
    for s, handler in saved.items():
        signal.signal(s, handler)
    return path


@pytest.fixture(scope="module")
def evaluation(run):
    """`evaluate(run)` once for the tests that only read it (one that changes it takes a deep copy)."""
    return evaluate(run, progress=False)


# -- metrics --------------------------------------------------------------------------------------------------------
def test_latitude_weights_by_hand_with_poles_and_cos_without():
    w = latitude_weights(np.array([-90.0, 0.0, 90.0]))  # cells [-90,-45], [-45,45], [45,90]
    raw = np.array([1 - np.sin(np.pi / 4), 2 * np.sin(np.pi / 4), 1 - np.sin(np.pi / 4)])
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-14)
    lat = synthetic.latitudes(32)  # equal bands, no poles: area ∝ cos(latitude)
    np.testing.assert_allclose(
        latitude_weights(lat), np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean(), rtol=1e-12
    )
    np.testing.assert_allclose(latitude_weights(lat[::-1]), latitude_weights(lat)[::-1], rtol=0)  # either order
    with pytest.raises(ValueError, match="at least 2 values"):
        latitude_weights(np.array([0.0]))


def reference_scores(f, o, c, lat):
    """An independent implementation: loops over forecasts, cell-area weights from the cells' edges."""
    edges = np.r_[-90.0, (lat[1:] + lat[:-1]) / 2, 90.0]
    area = np.diff(np.sin(np.deg2rad(edges)))
    w = area / area.mean()
    n = f.shape[0]
    out = {k: np.zeros(f.shape[1:3]) for k in ("mse", "mae", "se_w", "mae_w", "bias")}
    fo = ff = oo = 0.0
    for b in range(n):
        err = f[b] - o[b]
        out["mse"] += (err**2).mean(axis=(-2, -1)) / n
        out["mae"] += np.abs(err).mean(axis=(-2, -1)) / n
        out["se_w"] += np.einsum("lchw,h->lc", err**2, w) / err[0, 0].size / n
        out["mae_w"] += np.einsum("lchw,h->lc", np.abs(err), w) / err[0, 0].size / n
        out["bias"] += np.einsum("lchw,h->lc", err, w) / err[0, 0].size / n
        fo = fo + np.einsum("lchw,h->lc", (f[b] - c[b]) * (o[b] - c[b]), w)
        ff = ff + np.einsum("lchw,h->lc", (f[b] - c[b]) ** 2, w)
        oo = oo + np.einsum("lchw,h->lc", (o[b] - c[b]) ** 2, w)
    return {
        "mse": out["mse"],
        "mae": out["mae"],
        "rmse": np.sqrt(out["mse"]),
        "rmse_w": np.sqrt(out["se_w"]),
        "mae_w": out["mae_w"],
        "bias": out["bias"],
        "acc": fo / np.sqrt(ff * oo),
    }


def test_scores_equal_an_independent_implementation_and_merge_by_adding():
    rng = np.random.default_rng(0)
    lat = synthetic.latitudes(8)
    o = rng.normal(size=(6, 3, 2, 8, 16))
    c = o + rng.normal(size=o.shape)
    f = o + 0.5 * rng.normal(size=o.shape) + 0.1
    weights = latitude_weights(lat)
    whole, n = score_sums(f, o, c, weights)
    parts = [score_sums(f[s], o[s], c[s], weights) for s in (slice(0, 2), slice(2, 6))]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], whole, rtol=1e-12)
    assert n == parts[0][1] + parts[1][1] == 6
    ours, theirs = scores(whole, n), reference_scores(f, o, c, lat)
    for name, expected in theirs.items():
        np.testing.assert_allclose(ours[name], expected, rtol=1e-10, err_msg=name)


def test_acc_of_known_anomalies_and_skill_against_persistence():
    rng = np.random.default_rng(1)
    o = rng.normal(size=(4, 1, 1, 4, 8))
    c = np.zeros_like(o)
    weights = latitude_weights(synthetic.latitudes(4))
    assert scores(*score_sums(2 * o, o, c, weights))["acc"].item() == pytest.approx(1.0, abs=1e-12)
    assert scores(*score_sums(-o, o, c, weights))["acc"].item() == pytest.approx(-1.0, abs=1e-12)
    better, _ = score_sums(o + 0.5, o, c, weights)  # rmse_w 0.5
    persistence, _ = score_sums(o + 1.0, o, c, weights)  # rmse_w 1
    assert scores(better, 4, persistence)["skill_rmse_w"].item() == pytest.approx(-50.0)
    assert np.isnan(scores(*score_sums(c, o, c, weights))["acc"].item())  # the climatology has no anomaly


def test_calendar_and_climatology_by_day_and_hour():
    days = np.array(["2011-03-01T06", "2012-03-01T06", "2012-02-29T18", "2011-12-31T00"], dtype="datetime64[h]")
    day, slot = calendar_index(days, 6)
    assert day.tolist() == [60, 60, 59, 365] and slot.tolist() == [1, 1, 3, 0]
    times = np.arange(np.datetime64("2010-01-01T00"), np.datetime64("2012-01-01T00"), np.timedelta64(12, "h"))
    year = (times.astype("datetime64[Y]").astype(int) + 1970).astype(float)
    hour = (times - times.astype("datetime64[D]")).astype(int).astype(float)
    fields = (year * 10 + hour)[:, None, None, None] * np.ones((1, 2, 3, 4))  # mean over 2010, 2011: 20105 + hour
    clim = Climatology([(times[:300], fields[:300]), (times[300:], fields[300:])], 12, window_days=1)
    at = clim.at(np.array(["2017-07-04T12", "2019-07-04T00"], dtype="datetime64[h]"))
    assert at.shape == (2, 2, 3, 4) and at[0].flat[0] == 20105 + 12 and at[1].flat[0] == 20105
    with pytest.raises(ValueError, match="no training data within 0 days of calendar day 60"):
        Climatology([(times, fields)], 12, window_days=0)  # 29 February never occurs in 2010–2011


def test_a_misfit_is_named_in_one_line():
    from met2net.evaluation.source import misfit
    from met2net.model.met2net import Met2Net

    cfg = load_config(ROOT / "configs/quickstart.yaml", TINY)
    model = Met2Net(cfg.model, with_copies=False)
    state = dict(model.state_dict())
    name = next(k for k in state if k.startswith("decoders_q.") and k.endswith("weight"))
    state[name] = torch.zeros(3, *state[name].shape)  # a shape no config gives
    del state["translator_q.conv_out.bias"]
    state["translator_q.extra"] = torch.zeros(1)
    said = misfit(state, model, cfg)
    assert said.startswith(f"{name}: weights (3, ") and "\n" not in said
    assert "1 tensor(s) missing, e.g. translator_q.conv_out.bias; 1 unexpected, e.g. translator_q.extra" in said
    wider = load_config(ROOT / "configs/quickstart.yaml", [*TINY, "model.hid_s=8"])
    assert misfit(dict(model.state_dict()), Met2Net(wider.model, with_copies=False), wider).startswith(
        "model.hid_s: config 8, weights "
    )


# -- a trained model ------------------------------------------------------------------------------------------------
def test_persistence_and_climatology_rows_are_those_of_the_data(run, evaluation):
    """The persistence MSE at every lead equals the one computed directly from the built-in data."""
    ev = evaluation
    cfg = load_source(run).cfg
    f = synthetic.generate([2012], grid=tuple(cfg.model.grid), step_hours=24, variables=cfg.model.variables)
    series = np.stack([f.fields[v] for v in cfg.model.variables], axis=1).astype(np.float64)
    n_in, n_out = cfg.model.in_frames, cfg.model.out_frames
    starts = range(len(series) - n_in - n_out + 1)
    assert ev.count == len(starts)
    mse = np.mean(
        [((series[s + n_in : s + n_in + n_out] - series[s + n_in - 1]) ** 2).mean(axis=(-2, -1)) for s in starts],
        axis=0,
    )
    table = ev.table()
    np.testing.assert_allclose(table["persistence"]["mse"], mse, rtol=1e-5)  # data are float32 in the windows
    assert ev.lead_hours == [24, 48] and table["met2net"]["rmse_w"].shape == (2, len(cfg.model.variables))
    assert np.all(np.isfinite(table["met2net"]["acc"])) and np.all(np.isnan(table["climatology"]["acc"]))


def test_rollout_continues_a_single_forecast(run):
    loaded = load_source(run)
    x = torch.randn(3, loaded.cfg.model.in_frames, len(loaded.cfg.model.variables), *loaded.cfg.model.grid)
    two = forecast(loaded.model, x, 2)
    assert two.shape[1] == 2 * loaded.cfg.model.out_frames
    assert torch.equal(two[:, : loaded.cfg.model.out_frames], loaded.model.predict(x))
    assert torch.equal(two[:, loaded.cfg.model.out_frames :], loaded.model.predict(loaded.model.predict(x)))
    ev = evaluate(run, rollout=2, progress=False)
    assert ev.lead_hours == [24, 48, 72, 96]


def test_outputs_and_command_line(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "-o", str(tmp_path / "ev"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "persistence" in printed and "t2m" in printed
    with open(tmp_path / "ev/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["variable", "lead_hours", "metric", "model", "value"]
    assert {(r["metric"], r["model"]) for r in rows} >= {
        ("rmse_w", "met2net"),
        ("acc", "met2net"),
        ("rmse_w", "persistence"),
        ("rmse_w", "climatology"),
        ("skill_rmse_w", "met2net"),
        ("mse", "met2net"),
    }
    doc = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert doc["lead_hours"] == [24, 48] and doc["metrics"]["climatology"]["acc"][0][0] is None
    mean_t2m = doc["mean_over_leads"]["met2net"]["mse"]["t2m"]
    assert mean_t2m == pytest.approx(np.mean(doc["metrics"]["met2net"]["mse"], axis=0)[2])
    assert "| t2m |" in (tmp_path / "ev/report.md").read_text()


def test_maps_of_chosen_variables_and_leads(evaluation, tmp_path, capsys):
    ev = evaluation
    write_outputs(ev, tmp_path)
    files = write_plots(ev, tmp_path, ["t2m", "r"], [48])
    maps = sorted(p for p in files if p.name.startswith("map_"))
    assert [p.name for p in maps] == ["map_r_48h.png", "map_t2m_48h.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files)
    default = [p.name for p in write_plots(ev, tmp_path) if p.name.startswith("map_")]
    assert len(default) == len(ev.variables) * 2  # every variable at the first and last of two leads
    with pytest.raises(UserError, match=r"--map-variables: z500 not among the model's variables \(u10, v10, t2m"):
        write_plots(ev, tmp_path / "bad", ["t2m", "z500"])
    with pytest.raises(UserError, match=r"--map-leads: 12 not among this evaluation's leads in hours \(24, 48;"):
        write_plots(ev, tmp_path / "bad", None, [12, 24])
    assert not (tmp_path / "bad").exists()  # refused before any file
    args = build_parser().parse_args(["evaluate", "RUN", "k=v", "--map-variables", "t2m,r", "--map-leads", "24,48"])
    assert (args.map_variables, args.map_leads, args.overrides) == (["t2m", "r"], [24, 48], ["k=v"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "RUN", "--map-leads", "6h"])
    assert "'6h': expected whole numbers separated by commas" in capsys.readouterr().err


def test_a_failed_write_leaves_the_previous_outputs(evaluation, tmp_path):
    ev = copy.deepcopy(evaluation)
    write_outputs(ev, tmp_path)
    before = (tmp_path / "metrics.csv").read_text()
    ev.sums = ev.sums[:, :1]  # now inconsistent with its lead list: writing fails half-way
    with pytest.raises(IndexError):
        write_outputs(ev, tmp_path)
    assert (tmp_path / "metrics.csv").read_text() == before and not list(tmp_path.glob(".*tmp"))


def test_forecasts_as_cf_netcdf_equal_the_model(run, tmp_path):
    assert main(["predict", str(run), "--init", "2012-03-01T00", "2012-06-01T00", "-o", str(tmp_path / "f.nc")]) == 0
    ds = xr.open_dataset(tmp_path / "f.nc")
    assert ds["t2m"].dims == ("forecast_reference_time", "forecast_period", "lat", "lon")
    assert ds["t2m"].attrs["units"] == "K" and ds["t2m"].attrs["standard_name"] == "air_temperature"
    assert ds["lat"].attrs["units"] == "degrees_north" and ds.attrs["Conventions"].startswith("CF")
    assert ds["time"].values[1, 0] == np.datetime64("2012-06-02T00")  # valid time = init + lead
    assert ds["forecast_period"].values[-1] == np.timedelta64(48, "h")
    loaded = load_source(run)
    assert (
        ds.attrs["source"].startswith("met2net ") and "implicit, step 4" in ds.attrs["checkpoint"]
    )  # model, checkpoint
    assert str(run / "checkpoints/implicit/step_4") in ds.attrs["checkpoint"]
    assert json.loads(ds.attrs["config"]) == loaded.cfg.to_dict()  # and the full config
    cfg = loaded.cfg
    f = synthetic.generate([2012], grid=tuple(cfg.model.grid), step_hours=24, variables=cfg.model.variables)
    series = np.stack([f.fields[v] for v in cfg.model.variables], axis=1)
    day = int((np.datetime64("2012-06-01") - np.datetime64("2012-01-01")).astype(int))
    x = (series[day - 1 : day + 1] - loaded.mean[:, None, None]) / loaded.std[:, None, None]
    y = loaded.model.predict(torch.from_numpy(x.astype(np.float32))[None])[0].double().numpy()
    expected = y * loaded.std[:, None, None] + loaded.mean[:, None, None]
    got = np.stack([ds[v].values[1] for v in cfg.model.variables], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_consolidated_file_scores_and_forecasts_as_its_checkpoint(run, evaluation, tmp_path, monkeypatch):
    """`met2net evaluate` and `predict` from model.safetensors + met2net.json (issue 13, loading): the same table and
    the same forecasts as from the checkpoint it was made of, and nothing is unpickled on the way."""
    from met2net.consolidate import consolidate

    ckpt = run / "checkpoints/implicit/step_4"
    out = consolidate(ckpt, tmp_path / "consolidated")
    assert evaluation.source.startswith(f"{ckpt} (")  # the run's last checkpoint is what ``evaluation`` scored
    expected, expected_forecast = evaluation.table(), predict(ckpt, ["2012-06-01T00"])
    variables = load_source(ckpt).cfg.model.variables

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for source in (out, out / "model.safetensors"):  # the directory, or the file alone (its header has the metadata)
        ev = evaluate(source, progress=False)
        assert ev.count == 366 - 4 + 1
        table = ev.table()
        assert sorted(table) == sorted(expected)
        for model, metrics in expected.items():
            for metric, values in metrics.items():
                np.testing.assert_array_equal(table[model][metric], values, err_msg=f"{model} {metric}")
        ds = predict(source, ["2012-06-01T00"])
        for v in variables:
            np.testing.assert_array_equal(ds[v].values, expected_forecast[v].values, err_msg=v)


@pytest.mark.parametrize(
    "what, match",
    [
        ("other model", "cannot be overridden .model.hid_t"),
        ("empty split", "'data.test_years' is empty"),
        ("no statistics", "no normalisation statistics"),
        (
            "weights of another model",
            r"step_4: its weights do not fit the model its config describes \(model.hid_t: "
            r"config 32, weights 16 \(translator_q.conv_in.weight \(16, 8, 1, 1\)",
        ),
        ("init outside", r"init time 2012-01-01T12: not on the data.s 24-hourly axis"),
    ],
)
def test_clear_errors(run, tmp_path, what, match):
    if what == "other model":
        with pytest.raises(ConfigError, match=match):
            evaluate(run, overrides=["model.hid_t=32"], progress=False)
    elif what == "empty split":
        with pytest.raises(ConfigError, match=match):
            evaluate(run, overrides=["data.test_years=[]"], progress=False)
    elif what in ("no statistics", "weights of another model"):
        import shutil

        copy = tmp_path / "step_4"
        shutil.copytree(run / "checkpoints/implicit/step_4", copy)
        meta = json.loads((copy / "meta.json").read_text())
        if what == "no statistics":
            del meta["stats"]
        else:  # a checkpoint whose config names another model than its weights are
            meta["config"]["model"]["hid_t"] = 32
        (copy / "meta.json").write_text(json.dumps(meta))
        (copy / "COMPLETE").write_text("")  # an older checkpoint: no checksums to check
        with pytest.raises(ConfigError, match=match) as error:
            evaluate(copy, progress=False)
        assert "\n" not in str(error.value)  # one line, not torch's list of every tensor
    else:
        with pytest.raises(ValueError, match=match):
            predict(run, ["2012-01-01T12"])
