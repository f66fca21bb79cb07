"""The sweep report's plots, as PNG files: throughput against ranks with the ideal line, scaling efficiency, peak memory
per rank against ZeRO stage, and the step-time split as stacked bars.

Drawn the way ``met2net/evaluation/plots.py`` draws (a ``Figure`` on its own Agg canvas, no pyplot state). A series
is one (ZeRO stage, micro-batch × accumulation): the per-rank work held fixed while ranks are added, so its ideal is
its fewest-rank point's samples/s times the rank ratio, and its efficiency is the report's weak-scaling efficiency.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from met2net.scaling.report import Point, efficiency
from met2net.scaling.timing import SPLIT

DPI = 100  # as the evaluation plots
SIZE = (6.4, 4.0)  # inches; 640 × 400 pixels at DPI
SPLIT_COLORS = {
    "data": "tab:purple",
    "forward": "tab:blue",
    "backward": "tab:orange",
    "optimizer": "tab:green",
    "comm": "tab:red",
    "other": "tab:gray",
}


def series(points: Sequence[Point]) -> dict[tuple[int, int, int], list[Point]]:
    """(ZeRO stage, micro-batch, accumulation) → its points by ranks."""
    out: dict[tuple[int, int, int], list[Point]] = defaultdict(list)
    for p in points:
        out[(p.zero_stage, p.micro_batch, p.accumulation)].append(p)
    return {k: sorted(v, key=lambda p: p.world_size) for k, v in sorted(out.items())}


def _label(key: tuple[int, int, int]) -> str:
    zero, micro, acc = key
    return f"ZeRO {zero}, {micro}×{acc} per rank"


def plot_throughput(points: Sequence[Point], path: Path) -> Path:
    fig, ax = _axes()
    for key, ps in series(points).items():
        ranks = [p.world_size for p in ps]
        line = ax.plot(ranks, [p.samples_per_s for p in ps], marker="o", label=_label(key))[0]
        base = ps[0]
        ideal = [base.samples_per_s * n / base.world_size for n in ranks]
        ax.plot(ranks, ideal, linestyle="--", color=line.get_color(), alpha=0.6)
    ax.plot([], [], linestyle="--", color="gray", label="ideal (linear from the fewest ranks)")
    _ranks_axis(ax, points)
    ax.set_ylabel("samples/s")
    ax.set_title("Throughput against ranks")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_efficiency(points: Sequence[Point], path: Path) -> Path:
    fig, ax = _axes()
    for key, ps in series(points).items():
        ax.plot([p.world_size for p in ps], [efficiency(p, ps[0]) for p in ps], marker="o", label=_label(key))
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    _ranks_axis(ax, points)
    ax.set_ylabel("efficiency (samples/s per rank ÷ fewest ranks')")
    ax.set_ylim(bottom=0)
    ax.set_title("Scaling efficiency (per-rank batch fixed)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_memory(points: Sequence[Point], path: Path) -> Path:
    fig, ax = _axes()
    groups: dict[tuple[int, int, int], list[Point]] = defaultdict(list)
    for p in points:
        groups[(p.world_size, p.micro_batch, p.accumulation)].append(p)
    for (n, micro, acc), ps in sorted(groups.items()):
        ps = sorted(ps, key=lambda p: p.zero_stage)
        ax.plot(
            [p.zero_stage for p in ps],
            [p.peak_memory_mib for p in ps],
            marker="o",
            label=f"{n} rank(s), {micro}×{acc} per rank",
        )
    ax.set_xticks(sorted({p.zero_stage for p in points}))
    ax.set_xlabel("ZeRO stage")
    ax.set_ylabel("peak memory per rank (MiB)")
    ax.set_title("Peak memory per rank against ZeRO stage")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_split(points: Sequence[Point], path: Path) -> Path:
    with_split = sorted(
        (p for p in points if p.split), key=lambda p: (p.world_size, p.zero_stage, p.micro_batch, p.accumulation)
    )
    fig = _figure((max(6.4, 0.6 * len(with_split) + 2), 4.5))
    ax = fig.add_subplot()
    x = range(len(with_split))
    bottom = [0.0] * len(with_split)
    for part in SPLIT:
        ms = [p.split.get(part, 0.0) * 1e3 for p in with_split]
        ax.bar(x, ms, bottom=bottom, label=part, color=SPLIT_COLORS[part])
        bottom = [b + max(m, 0.0) for b, m in zip(bottom, ms)]
    ax.set_xticks(list(x), [p.label for p in with_split], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("ms per optimizer step")
    ax.set_title("Where a step's time goes (mean over timed steps and ranks)")
    ax.legend(fontsize=7, ncol=3)
    return _save(fig, path)


def write_plots(points: Sequence[Point], out_dir: Path) -> list[Path]:
    """Every plot the points allow into ``out_dir``: the split only when the points have it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_throughput(points, out_dir / "throughput.png"),
        plot_efficiency(points, out_dir / "efficiency.png"),
        plot_memory(points, out_dir / "memory.png"),
    ]
    if any(p.split for p in points):
        written.append(plot_split(points, out_dir / "step_split.png"))
    return written


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes() -> tuple[Figure, Axes]:
    fig = _figure(SIZE)
    return fig, fig.add_subplot()


def _ranks_axis(ax: Axes, points: Sequence[Point]) -> None:
    ax.set_xticks(sorted({p.world_size for p in points}))
    ax.set_xlabel("ranks")
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI)
    fig.clear()
    return path
