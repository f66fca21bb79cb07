"""An evaluation's outputs: ``metrics.csv`` (long format, one value a row), ``metrics.json`` (the same, nested, with
the averages over leads and what was evaluated) and ``report.md`` (the tables a paper prints). Each is written
to a temporary name and renamed into place, so a failed run never leaves half a file."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from met2net.data.atomic import atomic_write
from met2net.errors import UserError
from met2net.evaluation.evaluate import MODELS, Evaluation

COLUMNS = ("variable", "lead_hours", "metric", "model", "value")  # lead_months for monthly data
PAPER = ("mse", "mae", "rmse")  # the Met²Net paper's tables: plain spatial means, averaged over leads
WB2 = ("rmse_w", "acc", "bias", "mae_w", "skill_rmse_w")


def rows(ev: Evaluation) -> list[tuple[str, int, str, str, float]]:
    table = ev.table()
    out = []
    for model in MODELS:
        for metric, values in table[model].items():
            for li, lead in enumerate(ev.leads):
                for ci, var in enumerate(ev.variables):
                    value = float(values[li, ci])
                    if not math.isnan(value):
                        out.append((var, lead, metric, model, value))
    return out


def lead_means(ev: Evaluation) -> dict[str, dict[str, dict[str, float]]]:
    """model → metric → variable → mean over leads (the paper's single number per variable)."""
    with np.errstate(invalid="ignore"):
        return {
            m: {k: dict(zip(ev.variables, np.mean(v, axis=0).tolist())) for k, v in t.items()}
            for m, t in ev.table().items()
        }


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_outputs(ev: Evaluation, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([f"lead_{ev.lead_unit}" if c == "lead_hours" else c for c in COLUMNS])
    writer.writerows((v, lead, metric, model, f"{value:.9g}") for v, lead, metric, model, value in rows(ev))
    _write(out / "metrics.csv", buffer.getvalue())
    table = ev.table()
    document = {
        "source": ev.source,
        "split": ev.split,
        "rollout": ev.rollout,
        "forecasts": ev.count,
        "world_size": ev.world_size,
        "variables": ev.variables,
        "units": ev.units,
        f"lead_{ev.lead_unit}": ev.leads,
        "metrics": {m: {k: v.tolist() for k, v in t.items()} for m, t in table.items()},
        "mean_over_leads": lead_means(ev),
    }
    _write(out / "metrics.json", json.dumps(_finite(document), indent=1, allow_nan=False) + "\n")
    _write(out / "report.md", report(ev))
    return [out / "metrics.csv", out / "metrics.json", out / "report.md"]


def _finite(value: object) -> object:
    """NaN (a metric that does not apply, e.g. the climatology's own ACC) as JSON null."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def report(ev: Evaluation) -> str:
    table, means = ev.table(), lead_means(ev)
    lines = [
        f"# Evaluation of {ev.source}",
        "",
        f"{ev.split} split, {ev.count} forecasts, leads {_span(ev)}"
        + (f" ({ev.rollout} autoregressive steps)" if ev.rollout > 1 else "")
        + ", physical units.",
        "",
        "## Averaged over leads (the paper's convention: plain spatial means)",
        "",
        "| variable | units | " + " | ".join(f"{m} {k.upper()}" for k in PAPER for m in ("model", "persist.")) + " |",
        "|---|---|" + "---:|" * (2 * len(PAPER)),
    ]
    for ci, var in enumerate(ev.variables):
        cells = [f"{means[m][k][var]:.4g}" for k in PAPER for m in ("met2net", "persistence")]
        lines.append(f"| {var} | {ev.units[ci]} | " + " | ".join(cells) + " |")
    lines += ["", "## Per lead (WeatherBench 2 conventions: latitude-weighted)", ""]
    for metric in ("rmse_w", "acc"):
        lines += [
            f"### {metric}",
            "",
            "| variable | model | " + " | ".join(ev.lead_label(h) for h in ev.leads) + " |",
            "|---|---|" + "---:|" * len(ev.leads),
        ]
        for ci, var in enumerate(ev.variables):
            for model in MODELS:
                values = table[model][metric][:, ci]
                if np.all(np.isnan(values)):
                    continue
                lines.append(f"| {var} | {model} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
        lines.append("")
    skill = table["met2net"]["skill_rmse_w"]
    lines += [
        "### Skill against persistence (rmse_w, %; negative is better)",
        "",
        "| variable | " + " | ".join(ev.lead_label(h) for h in ev.leads) + " |",
        "|---|" + "---:|" * len(ev.leads),
    ]
    lines += [
        f"| {var} | " + " | ".join(f"{v:+.1f}" for v in skill[:, ci]) + " |" for ci, var in enumerate(ev.variables)
    ]
    return "\n".join(lines) + "\n"


def _span(ev: Evaluation) -> str:
    """'24–48 h'."""
    return f"{ev.leads[0]}–{ev.lead_label(ev.leads[-1])}"


def summary(ev: Evaluation) -> str:
    """A few lines for the terminal: per variable, the model's and the baselines' rmse_w averaged over leads."""
    means = lead_means(ev)
    width = max(len(v) for v in ev.variables)
    head = f"{'variable':<{width}}  units        rmse_w: met2net  persistence  climatology   acc: met2net"
    lines = [
        f"{ev.split} split, {ev.count} forecasts, leads {_span(ev)} (averaged over leads):",
        head,
    ]
    for ci, var in enumerate(ev.variables):
        r = [means[m]["rmse_w"][var] for m in MODELS]
        lines.append(
            f"{var:<{width}}  {ev.units[ci]:<12} {r[0]:>15.4g}  {r[1]:>11.4g}  {r[2]:>11.4g}"
            f"   {means['met2net']['acc'][var]:>12.3f}"
        )
    return "\n".join(lines)


def map_choice(
    ev: Evaluation, variables: Sequence[str] | None = None, leads: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """Indices of the variables and leads to map: by default every variable at the first, middle and last lead;
    a name or lead the evaluation does not have is an error listing those it has."""
    names = list(variables) if variables else list(ev.variables)
    unknown = [v for v in names if v not in ev.variables]
    if unknown:
        raise UserError(
            f"--map-variables: {', '.join(unknown)} not among the model's variables ({', '.join(ev.variables)})"
        )
    if leads:
        absent = [lead for lead in leads if lead not in ev.leads]
        if absent:
            raise UserError(
                f"--map-leads: {', '.join(map(str, absent))} not among this evaluation's leads in {ev.lead_unit} "
                f"({', '.join(map(str, ev.leads))}; --rollout K gives leads up to K × out_frames)"
            )
        chosen = [ev.leads.index(lead) for lead in leads]
    else:
        chosen = sorted({0, len(ev.leads) // 2, len(ev.leads) - 1})
    return [ev.variables.index(v) for v in names], chosen


def write_plots(
    ev: Evaluation, out: str | Path, map_variables: Sequence[str] | None = None, map_leads: Sequence[int] | None = None
) -> list[Path]:
    """Scores against lead (from ``metrics.csv``) and maps of the first window's truth, forecast and error for
    ``map_variables`` at ``map_leads`` (default: every variable at the first, middle and last lead), under
    ``out/plots``."""
    from met2net.evaluation.plots import plot_maps, plot_scores

    chosen, leads = map_choice(ev, map_variables, map_leads)  # before any file: a wrong name fails fast
    plots = Path(out) / "plots"
    files = plot_scores(Path(out) / "metrics.csv", plots)
    if ev.sample:
        files += plot_maps(
            ev.sample["truth"][leads][:, chosen],
            ev.sample["forecast"][leads][:, chosen],
            ev.lat,
            ev.lon,
            [ev.variables[c] for c in chosen],
            [ev.units[c] for c in chosen],
            [ev.leads[i] for i in leads],
            plots,
            title=f"first {ev.split} window",
            lead_unit=ev.lead_unit,
        )
    return files
