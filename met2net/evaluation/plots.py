"""Plots of an evaluation and of training runs, as PNG files: scores against lead time with the baselines, maps of
truth, forecast and error, and loss curves from ``metrics.jsonl``.

Every plot is a ``matplotlib.figure.Figure`` drawn on its own Agg canvas and closed with the function: nothing goes
through pyplot's global state, so plotting in a loop, in a test or on a node without a display leaks nothing and
needs no backend choice. Inputs are files the rest of met2net writes (the evaluation's long-format CSV, the trainer's
``metrics.jsonl``) or arrays in physical units; a malformed input is an error naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from met2net.errors import UserError

DPI = 100
SCORE_SIZE = (6.4, 4.0)  # inches; at DPI, the PNG is 640 × 400 pixels
MAP_SIZE = (15.0, 4.0)
LOSS_SIZE = (10.0, 7.0)

CSV_COLUMNS = ("variable", "lead_hours", "metric", "model", "value")
LEAD_COLUMNS = {"lead_hours": ("hours", "h"), "lead_months": ("months", "mo")}  # monthly data: lead_months
MODELS = ("met2net", "persistence", "climatology")  # drawn in this order, then any other model in CSV order
MODEL_STYLE = {
    "met2net": {"color": "tab:blue", "marker": "o"},
    "persistence": {"color": "tab:gray", "marker": "s", "linestyle": "--"},
    "climatology": {"color": "tab:green", "marker": "^", "linestyle": ":"},
}
METRIC_LABELS = {
    "mse": "MSE",
    "mae": "MAE",
    "rmse": "RMSE",
    "rmse_w": "latitude-weighted RMSE",
    "mae_w": "latitude-weighted MAE",
    "bias": "bias",
    "acc": "ACC",
    "skill_rmse_w": "RMSE skill vs persistence (%)",
}
ALL_VARIABLES = "all"  # the evaluation's rows averaged over the variables; not a variable of its own


# -- scores against lead time -----------------------------------------------------------------------------------
def read_scores(metrics_csv: Path) -> dict[tuple[str, str, str], dict[int, float]]:
    """The evaluation's long-format CSV as {(metric, variable, model): {lead_hours: value}}. The header must name
    every column of ``CSV_COLUMNS`` (in any order); a missing column, a bad number or a value given twice is an error
    naming the file, so a change of the format shows here and not as a silently wrong plot."""
    path = Path(metrics_csv)
    scores: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        lead_col = lead_column(header)
        missing = [c for c in CSV_COLUMNS if c not in header and not (c == "lead_hours" and lead_col != c)]
        if missing:
            raise UserError(
                f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; the header is "
                f"{','.join(header) or '(empty)'} and must name {','.join(CSV_COLUMNS)}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                lead, value = int(row[lead_col]), float(row["value"])
            except (TypeError, ValueError):
                raise UserError(
                    f"{path}, line {line}: {lead_col} must be an integer and value a number, got "
                    f"{lead_col}={row[lead_col]!r}, value={row['value']!r}"
                ) from None
            key = (row["metric"], row["variable"], row["model"])
            if lead in scores[key]:
                raise UserError(
                    f"{path}, line {line}: a second value for metric {key[0]!r}, variable {key[1]!r}, "
                    f"model {key[2]!r} at lead {lead} {LEAD_COLUMNS[lead_col][1]}"
                )
            scores[key][lead] = value
    return dict(scores)


def lead_column(header: list[str]) -> str:
    """The CSV's lead column: ``lead_months`` for monthly data, else ``lead_hours``."""
    return "lead_months" if "lead_months" in header and "lead_hours" not in header else "lead_hours"


def plot_scores(metrics_csv: Path, out_dir: Path, metrics: tuple[str, ...] = ("rmse_w", "acc")) -> list[Path]:
    """One PNG per (metric, variable), ``<metric>_<variable>.png``: the metric against lead time, one line per model
    (Met²Net and the baselines it has to beat, where the CSV has them), so that skill and where it runs out are seen
    at a glance. Rows of the variable ``all`` (averages over variables) are left out. A requested metric the CSV
    does not have at all is an error that lists the ones it has."""
    scores = read_scores(metrics_csv)
    with Path(metrics_csv).open(newline="") as f:
        unit = LEAD_COLUMNS[lead_column(next(csv.reader(f), []))][0]
    present = list(dict.fromkeys(metric for metric, _, _ in scores))
    absent = [m for m in metrics if m not in present]
    if absent:
        raise UserError(
            f"{metrics_csv}: no rows for metric(s) {', '.join(absent)}; it has {', '.join(present) or 'none'}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        variables = list(dict.fromkeys(v for m, v, _ in scores if m == metric and v != ALL_VARIABLES))
        for variable in variables:
            models = [name for m, v, name in scores if m == metric and v == variable]
            models = [m for m in MODELS if m in models] + [m for m in dict.fromkeys(models) if m not in MODELS]
            fig = _figure(SCORE_SIZE)
            ax = fig.add_subplot()
            for model in models:
                values = scores[(metric, variable, model)]
                leads = sorted(values)
                ax.plot(leads, [values[h] for h in leads], label=model, **MODEL_STYLE.get(model, {"marker": "o"}))
            if metric in ("bias", "skill_rmse_w"):
                ax.axhline(0.0, color="black", linewidth=0.6)
            leads = sorted({h for model in models for h in scores[(metric, variable, model)]})
            if len(leads) <= 12:
                ax.set_xticks(leads)
            ax.set_xlabel(f"lead time ({unit})")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_title(f"{variable}: {METRIC_LABELS.get(metric, metric)}")
            ax.grid(True, alpha=0.3)
            ax.legend()
            written.append(_save(fig, out_dir / f"{_safe(metric)}_{_safe(variable)}.png"))
    return written


# -- maps -------------------------------------------------------------------------------------------------------
def plot_maps(
    truth: np.ndarray,
    forecast: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    variables: list[str],
    units: list[str],
    leads: list[int],
    out_dir: Path,
    title: str = "",
    lead_unit: str = "hours",
) -> list[Path]:
    """One PNG per (variable, lead), ``map_<variable>_<lead>h.png`` (``<lead>mo`` for leads in months): truth,
    forecast and forecast − truth side by side. Truth and forecast share one colour scale, so a difference in
    amplitude is visible; the error uses a diverging colour map symmetric around 0, so its sign reads directly.
    Arrays are (lead, variable, lat, lon) in physical units; latitude may run either way."""
    truth, forecast = np.asarray(truth, dtype=float), np.asarray(forecast, dtype=float)
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    expected = (len(leads), len(variables), len(lat), len(lon))
    for name, array in (("truth", truth), ("forecast", forecast)):
        if array.shape != expected:
            raise ValueError(
                f"{name} has shape {array.shape}; expected (lead, variable, lat, lon) = {expected} from "
                f"{len(leads)} lead times, {len(variables)} variables and the {len(lat)}×{len(lon)} grid"
            )
    if len(units) != len(variables):
        raise ValueError(f"{len(units)} units for {len(variables)} variables {variables}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c, (variable, unit) in enumerate(zip(variables, units)):
        abbrev = {"hours": "h", "months": "mo"}[lead_unit]
        for i, lead in enumerate(leads):
            t, f = truth[i, c], forecast[i, c]
            error = f - t
            low, high = _finite_range(np.stack([t, f]))
            bound = _finite_range(np.abs(error))[1] or 1e-12  # a perfect forecast still gets a valid scale
            fig = _figure(MAP_SIZE)
            axes = fig.subplots(1, 3, sharex=True, sharey=True)
            panels = (
                (t, "truth", "viridis", low, high),
                (f, "forecast", "viridis", low, high),
                (error, "forecast − truth", "RdBu_r", -bound, bound),
            )
            for ax, (field_, name, cmap, vmin, vmax) in zip(axes, panels):
                mesh = ax.pcolormesh(lon, lat, field_, cmap=cmap, vmin=vmin, vmax=vmax, shading="nearest")
                ax.set_title(name)
                ax.set_xlabel("longitude (°E)")
                ax.set_aspect("equal")
                if name != "truth":
                    fig.colorbar(mesh, ax=axes[:2] if name == "forecast" else ax, label=unit, shrink=0.8)
            axes[0].set_ylabel("latitude (°N)")
            heading = f"{variable} at +{lead} {abbrev}"
            fig.suptitle(f"{title}: {heading}" if title else heading)
            written.append(_save(fig, out_dir / f"map_{_safe(variable)}_{lead}{abbrev}.png"))
    return written


# -- loss curves ------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One schedule's records in one ``metrics.jsonl``: a stretch of the x axis of the loss plot."""

    label: str
    train: dict[int, float] = field(default_factory=dict)  # step → loss; a resumed run's re-logged steps overwrite
    val: dict[int, float] = field(default_factory=dict)
    forecast: dict[int, float] = field(default_factory=dict)  # step → validation forecast_mse

    @property
    def length(self) -> int:
        return max([*self.train, *self.val, *self.forecast], default=0)


def read_losses(metrics_jsonl: Path, label: str) -> list[Segment]:
    """The train and validation losses of one ``metrics.jsonl``, one ``Segment`` per schedule in the order the
    file has them (stage one, then stage two of a round). An empty file, a file without training or validation
    records, or a line that is not JSON is an error naming the file."""
    path = Path(metrics_jsonl)
    segments: dict[str, Segment] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not a JSON record ({e.msg})") from None
        split, loss = record.get("split"), record.get("loss")
        if split not in ("train", "val") or not isinstance(loss, (int, float)) or "step" not in record:
            continue
        schedule = str(record.get("schedule", ""))
        segment = segments.setdefault(schedule, Segment(f"{label} {schedule}".strip()))
        step = int(record["step"])
        (segment.train if split == "train" else segment.val)[step] = float(loss)
        if split == "val" and isinstance(record.get("forecast_mse"), (int, float)):
            segment.forecast[step] = float(record["forecast_mse"])
    if not segments:
        raise UserError(
            f"{path}: no training or validation records (split 'train' or 'val' with a 'loss'); "
            f"{'the file is empty' if not path.read_text().strip() else 'is it a met2net metrics.jsonl?'}"
        )
    return list(segments.values())


def find_metrics(paths: Iterable[Path]) -> list[Path]:
    """The ``metrics.jsonl`` files of run directories, in training order: ``<run>/metrics.jsonl``, then
    ``<run>/round_<r>/metrics.jsonl`` by round number. A path that is a file is taken as it is."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such run directory or metrics.jsonl")
        rounds = sorted(path.glob("round_*/metrics.jsonl"), key=lambda p: _round_number(p.parent.name))
        here = [path / "metrics.jsonl"] if (path / "metrics.jsonl").is_file() else []
        if not here and not rounds:
            raise FileNotFoundError(f"{path}: no metrics.jsonl, nor round_*/metrics.jsonl")
        found += here + rounds
    return found


def plot_losses(metrics_jsonl: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Training and validation loss curves of one or several runs on one figure, so that stage one and stage two
    of every round read as one training history. Each (file, schedule) is a segment of the x axis, placed after
    the one before (its steps offset by the earlier segments' lengths, boundaries marked). Top panel: each
    schedule's own loss (train solid, validation dashed); bottom panel, when the records have it: the validation
    forecast MSE of D_q T_q E_q, the one measure comparable across stages. Log-scale y."""
    files = [Path(p) for p in metrics_jsonl]
    if not files:
        raise UserError("no metrics.jsonl files to plot")
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} metrics.jsonl files")
    labels = labels if labels is not None else _default_labels(files)
    segments = [s for path, label in zip(files, labels) for s in read_losses(path, label)]
    with_forecast = any(s.forecast for s in segments)
    fig = _figure(LOSS_SIZE)
    axes = fig.subplots(2 if with_forecast else 1, 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(segments))]
    offset = 0
    for segment, color in zip(segments, colors):
        for ax in axes:
            if offset:
                ax.axvline(offset, color="black", linewidth=0.5, alpha=0.4)
        for data, style, name, ax in (
            (segment.train, {"linestyle": "-"}, "train", axes[0]),
            (segment.val, {"linestyle": "--", "marker": "o", "markersize": 3}, "val", axes[0]),
            (segment.forecast, {"linestyle": "--", "marker": "o", "markersize": 3}, "val", axes[-1]),
        ):
            if data:  # without any forecast_mse there is one panel and no segment has one
                steps = sorted(data)
                ax.plot([offset + s for s in steps], [data[s] for s in steps], color=color,
                        label=f"{segment.label} {name}", **style)  # fmt: skip
        axes[0].annotate(
            segment.label, (offset, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
            textcoords="offset points", va="top", fontsize=7, color=color,
        )  # fmt: skip
        offset += segment.length
    axes[0].set_ylabel("loss (the schedule's own)")
    axes[0].set_title("training and validation loss")
    if with_forecast:
        axes[-1].set_ylabel("validation forecast MSE\n(D_q T_q E_q, normalised)")
    axes[-1].set_xlabel("optimizer step (schedules one after the other)")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=max(1, math.ceil(len(segments) / 6)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out)


# -- helpers ----------------------------------------------------------------------------------------------------
def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI)
    fig.clear()
    return path


def _safe(name: str) -> str:
    """A variable or metric name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name) or "-"


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def _round_number(name: str) -> tuple[int, str]:
    """``round_10`` after ``round_9``; a name without a number after every numbered one."""
    digits = name.removeprefix("round_")
    return (int(digits), "") if digits.isdigit() else (1 << 62, name)


def _default_labels(files: list[Path]) -> list[str]:
    """Each file's directory name (``round_2``, the run's name), with its parent's where that is ambiguous."""
    short = [p.parent.name for p in files]
    if len(set(short)) == len(short):
        return short
    return [f"{p.parent.parent.name}/{p.parent.name}" for p in files]
