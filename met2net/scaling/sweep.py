"""A sweep file: which points a scaling study trains, and how each one is set up (docs/scaling.md, "Running a sweep").

Pure parsing and arithmetic, no torch: ``met2net scale run --dry-run`` lists the points of a sweep on a login node.
A sweep is the cartesian product of ``grid``'s axes plus any ``points`` given one by one; each point becomes a list of
``key=value`` overrides of the base config, so a point trains exactly what ``met2net train`` would with them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from met2net.config import Config
from met2net.errors import UserError

# the axes of a point and the value an axis the sweep does not name takes
AXES: dict[str, Any] = {
    "ranks": 1,  # an int: ranks on one node; "NxT": N nodes × T tasks per node (Slurm)
    "zero_stage": 0,
    "micro_batch": 1,
    "accumulation": 1,
    "precision": "fp32",
    "activation_checkpointing": False,
}


@dataclass(frozen=True)
class PointSpec:
    """One point: its rank layout and training settings; ``name`` is its key in results.csv and its directory."""

    nodes: int
    tasks_per_node: int
    zero_stage: int
    micro_batch: int
    accumulation: int
    precision: str
    activation_checkpointing: bool

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step on all ranks: what ``training.batch_size`` means."""
        return self.micro_batch * self.accumulation * self.world_size

    @property
    def name(self) -> str:
        ac = "-ac" if self.activation_checkpointing else ""
        return (
            f"r{self.nodes}x{self.tasks_per_node}-z{self.zero_stage}-mb{self.micro_batch}-ga{self.accumulation}"
            f"-{self.precision}{ac}"
        )


@dataclass(frozen=True)
class SlurmSettings:
    """What each point's job asks Slurm for besides its nodes and tasks (``--executor slurm`` only)."""

    time_min: int = 30
    partition: str = ""
    account: str = ""
    gpus_per_node: int = 0


@dataclass(frozen=True)
class Sweep:
    config: str | None  # the base config file; None: met2net's defaults
    overrides: tuple[str, ...]  # applied to every point, before the point's own
    warmup_steps: int
    timed_steps: int
    points: tuple[PointSpec, ...]
    num_losses: int = 5  # first training losses recorded per point (the ZeRO parity check compares them)
    time_communication: bool = True  # time collectives (makes them blocking: docs/scaling.md)
    threads_per_rank: int = 1  # OMP_NUM_THREADS of each rank; Slurm's --cpus-per-task
    timeout_min: float = 30.0  # a local point still running after this is killed and recorded as failed
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps


KEYS = {
    "config",
    "overrides",
    "warmup_steps",
    "timed_steps",
    "losses",
    "time_communication",
    "threads_per_rank",
    "timeout_min",
    "grid",
    "points",
    "slurm",
}


def load_sweep(path: str | Path) -> Sweep:
    """The sweep file at ``path``; a relative ``config`` is found from the current directory, as ``met2net train``
    finds it."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    return parse_sweep(raw, str(path))


def parse_sweep(raw: Any, source: str = "sweep") -> Sweep:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the top level must be a mapping (config, overrides, warmup_steps, grid, ...)")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(KEYS))}")
    warmup, timed = _int(raw, "warmup_steps", 2, source), _int(raw, "timed_steps", 10, source)
    if warmup < 1 or timed < 1:
        raise UserError(
            f"{source}: warmup_steps and timed_steps must be at least 1 (the first step has no start to time from)"
        )
    grid = grid_points(raw["grid"], source) if raw.get("grid") else []  # no grid: the points alone
    specs = [*grid, *(_point(p, source) for p in raw.get("points") or [])]
    if not specs:
        raise UserError(f"{source}: no points; give a 'grid' of axes ({', '.join(AXES)}) or a list of 'points'")
    names = [s.name for s in specs]
    duplicate = sorted({n for n in names if names.count(n) > 1})
    if duplicate:
        raise UserError(f"{source}: point(s) {', '.join(duplicate)} given twice")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise UserError(f"{source}: 'overrides' must be a list of key=value strings")
    slurm = raw.get("slurm") or {}
    known = {f.name for f in fields(SlurmSettings)}
    if not isinstance(slurm, dict) or set(slurm) - known:
        raise UserError(f"{source}: 'slurm' takes {', '.join(sorted(known))}")
    return Sweep(
        config=raw.get("config"),
        overrides=tuple(overrides),
        warmup_steps=warmup,
        timed_steps=timed,
        points=tuple(specs),
        num_losses=_int(raw, "losses", 5, source),
        time_communication=bool(raw.get("time_communication", True)),
        threads_per_rank=_int(raw, "threads_per_rank", 1, source),
        timeout_min=float(raw.get("timeout_min", 30.0)),
        slurm=SlurmSettings(**slurm),
    )


def grid_points(grid: dict[str, Any], source: str = "sweep") -> list[PointSpec]:
    """The cartesian product of the grid's axes, in the order the axes are listed in ``AXES`` (ranks vary slowest)."""
    if not isinstance(grid, dict) or set(grid) - set(AXES):
        raise UserError(f"{source}: 'grid' maps axes ({', '.join(AXES)}) to lists of values")
    values = [_as_list(grid.get(axis, [default])) for axis, default in AXES.items()]
    return [_point(dict(zip(AXES, combo)), source) for combo in itertools.product(*values)]


def parse_ranks(value: Any, source: str = "sweep") -> tuple[int, int]:
    """``2`` → (1 node, 2 tasks); ``"2x1"`` → (2 nodes, 1 task per node)."""
    text = str(value).lower().strip()
    nodes, sep, tasks = text.partition("x")
    try:
        layout = (int(nodes), int(tasks)) if sep else (1, int(text))
    except ValueError:
        raise UserError(f"{source}: ranks {value!r}: give a number of ranks or NODESxTASKS, e.g. 2x1") from None
    if min(layout) < 1:
        raise UserError(f"{source}: ranks {value!r}: nodes and tasks must be at least 1")
    return layout


def _point(raw: Any, source: str) -> PointSpec:
    if not isinstance(raw, dict) or set(raw) - set(AXES):
        raise UserError(f"{source}: a point maps axes ({', '.join(AXES)}) to one value each, got {raw!r}")
    p = {**AXES, **raw}
    nodes, tasks = parse_ranks(p["ranks"], source)
    try:
        spec = PointSpec(
            nodes,
            tasks,
            int(p["zero_stage"]),
            int(p["micro_batch"]),
            int(p["accumulation"]),
            str(p["precision"]),
            bool(p["activation_checkpointing"]),
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: point {raw!r}: {e}") from None
    if spec.micro_batch < 1 or spec.accumulation < 1:
        raise UserError(f"{source}: point {raw!r}: micro_batch and accumulation must be at least 1")
    return spec


def point_overrides(sweep: Sweep, spec: PointSpec, run_dir: Path) -> list[str]:
    """The base overrides, then the point's: batch from the layout (micro × accumulation × ranks), ZeRO, precision,
    warm-up + timed steps; validation only after the last step (an epoch's end would otherwise validate inside the
    timed steps), a fresh run directory, no progress bar."""
    total = sweep.total_steps
    return [
        *sweep.overrides,
        f"training.batch_size={spec.global_batch}",
        f"deepspeed.zero_stage={spec.zero_stage}",
        f"deepspeed.gradient_accumulation={spec.accumulation}",
        f"training.precision={spec.precision}",
        f"deepspeed.activation_checkpointing={str(spec.activation_checkpointing).lower()}",
        f"training.max_steps={total}",
        f"training.val_every={total}",
        "training.checkpoint_every=0",
        "training.resume=false",
        "training.progress=false",
        f"run.dir={run_dir}",
    ]


def config_hash(cfg: Config) -> str:
    """12 hex digits of the resolved config without its run directory: equal for points that train the same thing
    (in any sweep directory), different when anything that shapes the run differs."""
    d = cfg.to_dict()
    d["run"] = {k: v for k, v in d["run"].items() if k != "dir"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _int(raw: dict[str, Any], key: str, default: int, source: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{source}: '{key}' must be an integer, got {value!r}")
    return value
