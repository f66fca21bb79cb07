"""Evaluation and training plots: valid PNGs of the promised size, one file per (metric, variable) or (variable,
lead), baselines drawn only where the CSV has them, and clear errors for malformed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from met2net import cli
from met2net.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, size: tuple[float, float]) -> np.ndarray:
    """A PNG file that matplotlib reads back with (height, width) = size × DPI pixels."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    width, height = (round(s * plots.DPI) for s in size)
    assert image.shape[:2] == (height, width)
    return image


def write_csv(path: Path, rows: list[tuple], header: str = "variable,lead_hours,metric,model,value") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def score_rows() -> list[tuple]:
    rows = []
    for variable in ("t2m", "u10", "all"):
        for lead in (6, 12, 24):
            for model in ("met2net", "persistence", "climatology"):
                rows.append((variable, lead, "rmse_w", model, 1.0 + lead / 24))
            for model in ("met2net", "climatology"):  # no ACC for persistence
                rows.append((variable, lead, "acc", model, 0.9 - lead / 100))
            rows.append((variable, lead, "skill_rmse_w", "met2net", 20.0))
    return rows


def test_one_png_per_metric_and_variable(tmp_path):
    csv = write_csv(tmp_path / "metrics.csv", score_rows())
    written = plots.plot_scores(csv, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["acc_t2m.png", "acc_u10.png", "rmse_w_t2m.png", "rmse_w_u10.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert_png(path, plots.SCORE_SIZE)
    more = plots.plot_scores(csv, tmp_path / "skill", metrics=("skill_rmse_w",))
    assert [p.name for p in more] == ["skill_rmse_w_t2m.png", "skill_rmse_w_u10.png"]


def test_a_model_without_values_gets_no_line(tmp_path, monkeypatch):
    drawn: list[tuple[str, list[str]]] = []
    save = plots._save

    def spy(fig, path):
        drawn.append((path.name, [line.get_label() for line in fig.axes[0].get_lines() if line.get_label()[0] != "_"]))
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    plots.plot_scores(write_csv(tmp_path / "m.csv", score_rows()), tmp_path / "plots")
    lines = dict(drawn)
    assert lines["rmse_w_t2m.png"] == ["met2net", "persistence", "climatology"]
    assert lines["acc_t2m.png"] == ["met2net", "climatology"]


def test_malformed_csv_names_the_file_and_the_column(tmp_path):
    csv = write_csv(tmp_path / "bad.csv", [("t2m", 6, "rmse_w", 1.0)], header="variable,lead_hours,metric,value")
    with pytest.raises(ValueError, match=r"bad\.csv.*missing column\(s\) 'model'"):
        plots.plot_scores(csv, tmp_path / "plots")
    csv = write_csv(tmp_path / "lead.csv", [("t2m", "six", "rmse_w", "met2net", 1.0)])
    with pytest.raises(ValueError, match=r"lead\.csv, line 2: lead_hours must be an integer"):
        plots.plot_scores(csv, tmp_path / "plots")
    csv = write_csv(tmp_path / "twice.csv", [("t2m", 6, "rmse_w", "met2net", 1.0)] * 2)
    with pytest.raises(ValueError, match=r"twice\.csv, line 3: a second value"):
        plots.plot_scores(csv, tmp_path / "plots")
    with pytest.raises(ValueError, match=r"no rows for metric\(s\) mae_w; it has rmse_w, acc, skill_rmse_w"):
        plots.plot_scores(write_csv(tmp_path / "m.csv", score_rows()), tmp_path / "plots", metrics=("mae_w",))


def test_maps_three_panels_per_variable_and_lead(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(2, 3, 8, 16)) * 10 + 280
    forecast = truth + rng.normal(size=truth.shape)
    lat = np.linspace(78.75, -78.75, 8)  # north to south, as in WeatherBench
    lon = np.arange(16) * 22.5
    written = plots.plot_maps(
        truth, forecast, lat, lon, ["t2m", "u10", "r"], ["K", "m s-1", "%"], [6, 12], tmp_path, title="test"
    )
    assert sorted(p.name for p in written) == sorted(f"map_{v}_{h}h.png" for v in ("t2m", "u10", "r") for h in (6, 12))
    for path in written:
        assert_png(path, plots.MAP_SIZE)
    perfect = plots.plot_maps(truth[:1, :1], truth[:1, :1], lat, lon, ["t2m"], ["K"], [6], tmp_path / "perfect")
    assert_png(perfect[0], plots.MAP_SIZE)  # zero error: still a valid colour scale
    with pytest.raises(ValueError, match=r"forecast has shape \(2, 3, 8, 15\)"):
        plots.plot_maps(truth, forecast[..., :15], lat, lon, ["t2m", "u10", "r"], ["K"] * 3, [6, 12], tmp_path)


def write_metrics(path: Path, schedules: dict[str, int], val_every: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"split": "start", "step": 0, "schedule": next(iter(schedules))}]
    for schedule, steps in schedules.items():
        for step in range(1, steps + 1):
            lines.append({"split": "train", "step": step, "schedule": schedule, "loss": 1.0 / step, "lr": 1e-3})
            if step % val_every == 0:
                val = {"split": "val", "step": step, "schedule": schedule, "loss": 1.5 / step, "forecast_mse": 2 / step}
                lines.append(val)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_losses_of_several_rounds_on_one_figure(tmp_path):
    run = tmp_path / "run"
    for r in (1, 2, 10):
        write_metrics(run / f"round_{r}" / "metrics.jsonl", {"stage1": 4, "stage2": 6})
    files = plots.find_metrics([run])
    assert [p.parent.name for p in files] == ["round_1", "round_2", "round_10"]
    out = plots.plot_losses(files, tmp_path / "figs" / "losses.png")
    assert out == tmp_path / "figs" / "losses.png"
    assert_png(out, plots.LOSS_SIZE)
    segments = [s for f in files for s in plots.read_losses(f, f.parent.name)]
    assert [s.label for s in segments][:2] == ["round_1 stage1", "round_1 stage2"]
    assert [s.length for s in segments] == [4, 6] * 3


def test_losses_without_forecast_mse_and_resumed_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"split": "train", "step": s, "schedule": "implicit", "loss": 1.0} for s in (1, 2, 3, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (segment,) = plots.read_losses(path, "run")
    assert sorted(segment.train) == [1, 2, 3, 4] and not segment.forecast
    assert_png(plots.plot_losses([path], tmp_path / "l.png", labels=["mine"]), plots.LOSS_SIZE)


def test_loss_errors_are_clear(tmp_path):
    empty = tmp_path / "run" / "metrics.jsonl"
    empty.parent.mkdir()
    empty.write_text("")
    with pytest.raises(ValueError, match=r"run/metrics\.jsonl: no training or validation records.*empty"):
        plots.plot_losses([empty], tmp_path / "l.png")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"split": "train", "step": 1, "loss": 1.0}\n{"split": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2: not a JSON record"):
        plots.plot_losses([broken], tmp_path / "l.png")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nothing: no metrics\.jsonl, nor round_\*/metrics\.jsonl"):
        plots.find_metrics([tmp_path / "nothing"])


def test_cli(tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run / "metrics.jsonl", {"stage1": 4, "stage2": 4})
    assert cli.main(["plot", "losses", str(run), "-o", str(tmp_path / "losses.png")]) == 0
    assert_png(tmp_path / "losses.png", plots.LOSS_SIZE)
    csv = write_csv(tmp_path / "metrics.csv", score_rows())
    assert cli.main(["plot", "scores", str(csv), "-o", str(tmp_path / "scores")]) == 0
    assert len(list((tmp_path / "scores").glob("*.png"))) == 4
    assert "4 plots" in capsys.readouterr().out
    assert cli.main(["plot", "losses", str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no such run directory" in capsys.readouterr().err
