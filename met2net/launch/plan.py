"""The job plan of a pipeline: which `met2net train` runs, in which directories, after which job.

Pure functions (no Slurm, no submitit, no torch), the one place the plan is computed: ``met2net submit`` and
``met2net.launch.submit_pipeline`` use them in-process, ``slurm/pipeline.sh`` through
``python -m met2net.launch.plan`` (``shell_lines``). A pipeline is ``rounds`` repetitions of ``stages``; with
more than one round each round has its own directory ``<run>/round_<r>`` and round r's first stage starts from
round r-1's last stage (weights only).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from met2net.config import SCHEDULES, STAGED, TrainingConfig, load_config  # (met2net.config imports no torch)
from met2net.errors import UserError

SLURM_NAME = re.compile(r"[A-Za-z0-9_.,:+@-]*")
"""What a partition or account may hold (several partitions: comma-separated). Values go into the sbatch script
submitit writes; anything else (a blank, a quote, ``$``, ``;``, a line break that would start a shell line after its
``#SBATCH`` comment) is refused rather than quoted."""


def check_path(what: str, path: str | Path) -> None:
    """A path written into a batch script (submitit's ``#SBATCH --output``, the tab-separated plan of
    ``slurm/pipeline.sh``): shell metacharacters are quoted there, but a control character such as a line break
    would end the ``#SBATCH`` comment it stands in, so it is refused."""
    if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
        raise UserError(
            f"{what} {str(path)!r} holds a line break or another control character, which a batch script cannot "
            "carry; choose a path without one"
        )


GPU_BIND = {"node": (), "task": ("--gpu-bind=single:1",)}
"""What each GPU layout adds to ``srun`` (``slurm/job.sh`` maps ``GPU_LAYOUT`` the same way): ``node``, every task
sees its node's GPUs and trains on ``cuda:<local rank>``; ``task``, Slurm binds one GPU to each task, which sees it
as ``cuda:0``. met2net follows whatever each task sees (``met2net/distributed/devices.py``), so a site that binds
GPUs itself works with either."""


@dataclass(frozen=True)
class Resources:
    """What every job of the pipeline asks the scheduler for (one task per GPU on GPU nodes, laid out as
    ``gpu_layout`` says: a key of ``GPU_BIND``)."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    time_min: int = 60
    partition: str = ""
    account: str = ""
    signal_delay_s: int = 120  # the time-limit warning (SIGUSR2) comes this long before the limit
    max_requeues: int = 3  # time-outs a job may checkpoint and requeue after; preemptions always requeue
    gpu_layout: str = "node"

    def __post_init__(self) -> None:
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "time_min"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0 or self.max_requeues < 0 or self.signal_delay_s < 0:
            raise UserError("--gpus-per-node, --max-requeues and --signal-delay must not be negative")
        if self.signal_delay_s >= self.time_min * 60:
            raise UserError(
                f"--signal-delay {self.signal_delay_s} s must be shorter than --time "
                f"{self.time_min} min, or the warning comes before the job starts working"
            )
        for option, value in (("--partition", self.partition), ("--account", self.account)):
            if not SLURM_NAME.fullmatch(value):
                raise UserError(
                    f"{option} {value!r}: expected a Slurm name (letters, digits and _ . , : + @ -; several "
                    "partitions comma-separated)"
                )
        if self.gpu_layout not in GPU_BIND:
            raise UserError(f"--gpu-layout {self.gpu_layout!r}: expected one of {', '.join(GPU_BIND)}")
        if self.gpu_layout == "task" and not self.gpus_per_node:
            raise UserError("--gpu-layout task binds one GPU to each task, but --gpus-per-node is 0")
        if self.gpus_per_node and self.tasks_per_node > 1 and self.gpus_per_node != self.tasks_per_node:
            raise UserError(
                f"--gpus-per-node {self.gpus_per_node} with --tasks-per-node {self.tasks_per_node}: each rank "
                "trains on one GPU, so ask for as many tasks as GPUs per node (or one task per node)"
            )

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def srun_args(self) -> tuple[str, ...]:
        return GPU_BIND[self.gpu_layout] if self.gpus_per_node else ()

    def describe_gpus(self) -> str:
        """The GPU layout as the plan states it, '' without GPUs."""
        n = self.gpus_per_node
        if not n:
            return ""
        if self.gpu_layout == "task":
            return (
                f"GPU layout task: srun {' '.join(self.srun_args)} gives each task one of its node's {n} GPU(s), "
                "seen as cuda:0"
            )
        return f"GPU layout node: every task sees its node's {n} GPU(s) and trains on cuda:<local rank>"


@dataclass(frozen=True)
class Job:
    name: str
    schedule: str
    round: int
    run_dir: str
    overrides: tuple[str, ...]  # the `met2net train CONFIG ...` overrides of this job, run.dir last
    after: int | None  # index of the job that must end successfully first (afterok)


def parse_stages(text: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in SCHEDULES]
    if unknown or not stages:
        raise UserError(f"--stages {text!r}: expected a comma-separated list of {', '.join(SCHEDULES)}")
    if len(set(stages)) != len(stages):
        raise UserError(f"--stages {text!r} names a stage twice")
    if "stage2" in stages and "stage1" in stages and stages.index("stage2") < stages.index("stage1"):
        raise UserError(f"--stages {text!r}: stage two starts from stage one, so stage1 comes first")
    return stages


def default_rounds(stages: tuple[str, ...], configured: int = TrainingConfig.rounds) -> int:
    """The config's ``training.rounds`` of stage one → stage two (round r + 1's decoders learn to read the
    Translator that round r's stage two trained: better forecasts at equal compute than one round, docs/results.md);
    one for anything else (a lone stage, or a schedule that trains everything at once)."""
    return configured if stages == STAGED else 1


def round_dir(run_dir: str | Path, round_: int, rounds: int) -> str:
    return str(run_dir) if rounds == 1 else str(Path(run_dir) / f"round_{round_}")


def make_plan(
    run_dir: str | Path,
    stages: tuple[str, ...],
    rounds: int | None = None,
    overrides: tuple[str, ...] = (),
    configured_rounds: int = TrainingConfig.rounds,
) -> list[Job]:
    """One job per (round, stage), each after the previous one; ``rounds`` None: ``default_rounds(stages,
    configured_rounds)``, the config's ``training.rounds``."""
    rounds = default_rounds(stages, configured_rounds) if rounds is None else rounds
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    check_path("run.dir", run_dir)
    if rounds > 1 and stages[0] not in ("stage1", "stage2"):
        raise UserError(
            f"--rounds {rounds}: rounds alternate stage one and stage two; "
            f"{stages[0]!r} trains everything at once (use --rounds 1)"
        )
    jobs: list[Job] = []
    for r in range(1, rounds + 1):
        here = round_dir(run_dir, r, rounds)
        for i, stage in enumerate(stages):
            extra = [f"training.schedule={stage}"]
            if r > 1 and i == 0:  # weights only, from the last stage of the previous round
                previous = Path(round_dir(run_dir, r - 1, rounds)) / "checkpoints" / stages[-1]
                extra.append(f"training.init_from={previous}")
            elif stage == "stage2" and "stage1" in stages[:i]:  # from this round's stage one, not the user's source
                extra.append("training.init_from=")
            extra.append(f"run.dir={here}")
            name = f"met2net-{stage}" + (f"-r{r}" if rounds > 1 else "")
            jobs.append(Job(name, stage, r, here, (*overrides, *extra), len(jobs) - 1 if jobs else None))
    return jobs


def format_plan(jobs: list[Job], res: Resources, config: str, executor: str) -> str:
    """What will be submitted, for the user to read before it is (and for ``--dry-run``)."""
    where = (
        "this machine, one job after the other"
        if executor == "local"
        else (
            f"Slurm{f' partition {res.partition}' if res.partition else ''}"
            f"{f', account {res.account}' if res.account else ''}"
        )
    )
    gpus = f", {res.gpus_per_node} GPU(s)/node" if res.gpus_per_node else ""
    lines = [
        f"met2net job plan: {len(jobs)} job(s) on {where}; config {config}",
        f"  each: {res.nodes} node(s) × {res.tasks_per_node} task(s) = {res.num_tasks} rank(s){gpus}, "
        f"{res.cpus_per_task} CPU(s)/task, time limit {res.time_min} min, time-limit warning "
        f"{res.signal_delay_s} s before, checkpoint-and-requeue at most {res.max_requeues} time-out(s)",
    ]
    if res.gpus_per_node:
        lines.append(f"  {res.describe_gpus()}")
    for i, job in enumerate(jobs):
        after = f"after job {job.after + 1} succeeds" if job.after is not None else "starts at once"
        lines.append(f"  {i + 1}. {job.name:<22} {job.schedule:<10} {after:<24} run dir {job.run_dir}")
        lines.append(f"       met2net train {config} {' '.join(job.overrides)}")
    return "\n".join(lines)


def parse_minutes(text: str) -> int:
    """A Slurm-style time limit in whole minutes: ``90``, ``1:30:00``, ``2-00:00:00``."""
    days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = rest.split(":")
    try:
        if len(parts) == 1:
            minutes = int(parts[0])
        else:
            h, m, s = ([0] * (3 - len(parts)) + [int(p) for p in parts])[-3:]
            minutes = h * 60 + m + (1 if s else 0)
        return int(days) * 24 * 60 + minutes
    except ValueError:
        raise UserError(f"--time {text!r}: expected minutes (90), H:MM:SS or D-HH:MM:SS") from None


SHELL_COLUMNS = ("name", "schedule", "round", "run_dir", "after", "overrides")


def shell_lines(jobs: list[Job], overrides: tuple[str, ...] = ()) -> list[str]:
    """The plan as ``slurm/pipeline.sh`` reads it, so that the shell does not compute it a second time: one line
    per job, the ``SHELL_COLUMNS`` separated by tabs. ``after`` is the 0-based index of the job that must succeed
    first, ``-`` for none. ``overrides`` is the job's ``OVERRIDES`` for ``slurm/job.sh``: the user's words then the
    plan's (``training.init_from=...``), separated by blanks, without ``training.schedule`` and ``run.dir``, which
    the batch script sets from ``SCHEDULE`` and ``RUN_DIR``. What the shell could not carry intact is refused
    rather than mangled: a tab or newline in a field, a blank inside an override word (the job splits on blanks)."""
    lines = []
    for job in jobs:
        if job.overrides[: len(overrides)] != tuple(overrides):
            raise ValueError(f"{job.name}: its overrides do not start with the pipeline's {list(overrides)}")
        planned = [o for o in job.overrides[len(overrides) :] if not o.startswith(("training.schedule=", "run.dir="))]
        for word in (*overrides, *planned):
            if not word or any(c.isspace() for c in word):
                raise UserError(
                    f"override {word!r}: OVERRIDES is split on blanks by slurm/job.sh, so a word cannot "
                    "be empty or contain blanks (choose a run directory without blanks)"
                )
        fields = (
            job.name,
            job.schedule,
            str(job.round),
            job.run_dir,
            "-" if job.after is None else str(job.after),
            " ".join((*overrides, *planned)),
        )
        for column, value in zip(SHELL_COLUMNS, fields):
            if (not value.strip() and column != "overrides") or any(c in value for c in "\t\n\r"):
                raise UserError(
                    f"{job.name}: {column} {value!r} cannot be passed to the shell "
                    "(empty, or holds a tab or line break)"
                )
        lines.append("\t".join(fields))
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m met2net.launch.plan``: print ``shell_lines`` for ``slurm/pipeline.sh``; exit 2 with the reason
    on stderr for a bad argument. Torch-free and quick, since the script runs it before every submission."""
    parser = argparse.ArgumentParser(
        prog="python -m met2net.launch.plan",
        description="The job plan of a pipeline, one tab-separated line per job: "
        + ", ".join(SHELL_COLUMNS)
        + " (after: 0-based index of the job to wait for, - for none; overrides: the job's OVERRIDES).",
    )
    parser.add_argument("--run-dir", required=True, help="the run directory (RUN_DIR)")
    parser.add_argument(
        "--config", help="the config (CONFIG), checked with --overrides: its training.rounds is the default"
    )
    parser.add_argument("--stages", default="stage1,stage2", help="schedules in order (default stage1,stage2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="repeat the stages; round r starts from round r-1 (default: the config's training.rounds for staged)",
    )
    parser.add_argument("--overrides", default="", help="the user's key=value words, separated by blanks (OVERRIDES)")
    args = parser.parse_args(argv)
    overrides = tuple(args.overrides.split())
    try:
        configured = load_config(args.config, list(overrides)).training.rounds  # no --config: the defaults'
        jobs = make_plan(args.run_dir, parse_stages(args.stages), args.rounds, overrides, configured)
        lines = shell_lines(jobs, overrides)
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
