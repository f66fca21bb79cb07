"""The Python launch API: the stage-one → stage-two pipeline from a notebook or a script.

``submit_pipeline`` is what ``met2net submit`` runs, with the command's options as keyword arguments:

    from met2net.launch import submit_pipeline

    jobs = submit_pipeline("configs/mv5_5.625.yaml", ["run.dir=/scratch/mv5"], nodes=4, tasks_per_node=4,
                           gpus_per_node=4, cpus_per_task=8, time="12:00:00", partition="gpu")
    print([(job.name, job.job_id, job.state) for job in jobs])
    jobs[-1].result()  # waits for stage two; raises with the log if it failed

``plan_pipeline`` checks the same arguments and returns the plan without submitting (``Pipeline.describe()``,
``Pipeline.sbatch_script(i)``). Both validate the config (``load_config``) and every argument before anything is
queued, and raise ``ValueError`` (or ``ConfigError``, itself a ``ValueError``) for a bad one, naming the
``met2net submit`` option it corresponds to (``--nodes`` for ``nodes``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import submitit

from met2net.config import load_config
from met2net.errors import UserError
from met2net.launch import plan
from met2net.launch.jobs import JobRecord
from met2net.launch.submit import render_sbatch, submit

EXECUTORS = ("slurm", "local")


@dataclass(frozen=True)
class SubmittedJob:
    """One queued job of a pipeline: the plan's job, its ``jobs.tsv`` record and submitit's handle (``handle``,
    for anything not wrapped here: ``stdout()``, ``get_info()``...). Wrapped because a job of several tasks (one
    per GPU) is a submitit meta-job whose ``result()`` refuses to answer; ``result()`` here waits for every task."""

    planned: plan.Job
    record: JobRecord
    handle: submitit.Job

    @property
    def name(self) -> str:
        return self.planned.name

    @property
    def job_id(self) -> str:
        """The scheduler's job id (Slurm's, or the process id on the local executor); a requeue keeps it."""
        return self.handle.job_id

    @property
    def state(self) -> str:
        """The job's state now: Slurm's (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``...), or
        the local executor's (``RUNNING``, ``FINISHED``, ``INTERRUPTED``). Asks sacct each time (one call), since
        submitit otherwise answers from a cache refreshed only every few minutes once a job is old."""
        self.handle.get_info(mode="force")
        return self.handle.state.split(" by ")[0]  # sacct's "CANCELLED by <uid>" → CANCELLED

    @property
    def log(self) -> Path:
        """Rank 0's log (stdout and stderr), appended across requeues."""
        return Path(self.record.log)

    def done(self) -> bool:
        """Whether the job has ended (successfully or not); does not wait."""
        return self.handle.done()

    def result(self) -> Path:
        """Wait until every task of the job has ended and return the run directory it trained in. Raises submitit's
        error (``FailedJobError`` with the failed task's traceback, or ``UncompletedJobError`` for a job cancelled
        or killed before it wrote a result, e.g. stage two after stage one failed)."""
        return Path(self.handle.results()[0])

    def cancel(self) -> None:
        """Cancel the job (``scancel``). The jobs after it can then never start: Slurm cancels them where
        ``kill_invalid_depend`` is set, else they stay PENDING (DependencyNeverSatisfied) until cancelled too."""
        self.handle.cancel(check=False)


@dataclass(frozen=True)
class Pipeline:
    """A checked pipeline, not submitted yet: the jobs (``plan.Job``, in order, each after the one it names), the
    resources every job asks for, the config (absolute path, or None for the built-in defaults) and where
    submitit keeps its files (``folder``)."""

    config: str | None
    run_dir: Path
    jobs: tuple[plan.Job, ...]
    resources: plan.Resources
    executor: str
    folder: Path

    def describe(self) -> str:
        """The job plan as ``met2net submit`` prints it before submitting: jobs, resources, dependencies, run
        directories and the exact ``met2net train`` commands."""
        return plan.format_plan(list(self.jobs), self.resources, str(self.config), self.executor)

    def sbatch_script(self, index: int, after_id: str | None = None) -> str:
        """The batch script submitit will give ``sbatch`` for job ``index`` (0-based), for review: a dependency on
        ``after_id`` if given, else on a placeholder naming the job it waits for. Slurm only."""
        if self.executor != "slurm":
            raise ValueError(f"--executor {self.executor}: only Slurm jobs have a batch script")
        job = self.jobs[index]
        if after_id is None and job.after is not None:
            after_id = f"<job id of {self.jobs[job.after].name}>"
        return render_sbatch(job, self.resources, self.folder, after_id)

    def submit(self, echo: Callable[[str], object] | None = print) -> list[SubmittedJob]:
        """Queue the jobs (see ``submit_pipeline``) and append each to ``<run_dir>/jobs.tsv``; ``echo`` gets one
        line per submitted (and, locally, finished) job."""
        submitted = submit(
            list(self.jobs), self.config, self.resources, self.executor, self.folder, self.run_dir, echo or _quiet
        )
        return [SubmittedJob(job, record, handle) for job, (record, handle) in zip(self.jobs, submitted)]


def _quiet(line: str) -> None:
    pass


def plan_pipeline(
    config: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    executor: Literal["slurm", "local"] = "slurm",
    stages: str | Sequence[str] = ("stage1", "stage2"),
    rounds: int | None = None,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int = 0,
    cpus_per_task: int = 1,
    time: int | str = 60,
    partition: str = "",
    account: str = "",
    signal_delay_s: int = 120,
    max_requeues: int = 3,
    gpu_layout: Literal["node", "task"] = "node",
    folder: str | Path | None = None,
) -> Pipeline:
    """Check everything ``submit_pipeline`` would submit and return the plan, queueing nothing: so that a mistake
    (a bad config key, a signal delay longer than the time limit) is reported before any job waits in a queue.
    The arguments are ``submit_pipeline``'s."""
    if isinstance(overrides, str):
        raise UserError(f"overrides {overrides!r}: expected a list of key=value strings, not one string")
    overrides = tuple(overrides)
    cfg = load_config(config, list(overrides))  # the config and overrides, validated before anything is queued
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    res = plan.Resources(
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task,
        time_min=plan.parse_minutes(str(time)),
        partition=partition,
        account=account,
        signal_delay_s=signal_delay_s,
        max_requeues=max_requeues,
        gpu_layout=gpu_layout,
    )
    if executor == "local" and res.gpu_layout == "task":
        raise UserError(
            "--gpu-layout task needs Slurm to bind the GPUs; the local executor gives every task the same "
            "CUDA_VISIBLE_DEVICES (use --gpu-layout node)"
        )
    run_dir = Path(cfg.run.dir).resolve()
    if folder is not None:
        plan.check_path("folder", folder)
    stage_list = plan.parse_stages(stages if isinstance(stages, str) else ",".join(stages))
    jobs = plan.make_plan(run_dir, stage_list, rounds, overrides, cfg.training.rounds)
    return Pipeline(
        config=str(Path(config).resolve()) if config else None,
        run_dir=run_dir,
        jobs=tuple(jobs),
        resources=res,
        executor=executor,
        folder=Path(folder).resolve() if folder is not None else run_dir / "submitit",
    )


def submit_pipeline(
    config: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    executor: Literal["slurm", "local"] = "slurm",
    stages: str | Sequence[str] = ("stage1", "stage2"),
    rounds: int | None = None,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int = 0,
    cpus_per_task: int = 1,
    time: int | str = 60,
    partition: str = "",
    account: str = "",
    signal_delay_s: int = 120,
    max_requeues: int = 3,
    gpu_layout: Literal["node", "task"] = "node",
    folder: str | Path | None = None,
    dry_run: bool = False,
    echo: Callable[[str], object] | None = print,
) -> list[SubmittedJob]:
    """Submit ``stages`` (``rounds`` times; default: the config's ``training.rounds`` for stage one → stage two) as
    jobs that each run ``met2net train config *overrides`` on every task, each job after the previous one
    succeeded; return one ``SubmittedJob`` per job, in order.

    ``config``/``overrides``: as for ``met2net train`` (``run.dir=...`` picks the run directory; round r of several
    trains in ``<run.dir>/round_<r>`` from round r-1's weights). ``executor="slurm"`` queues every job at once,
    chained with ``afterok`` dependencies, and returns: wait with ``jobs[-1].result()``. ``executor="local"`` runs
    the jobs on this machine, one after the other, and returns when the last one finished: submitit's local
    executor has no dependencies, so waiting is how stage two comes after stage one; a failed job raises
    ``met2net.launch.JobFailed`` (its ``handles`` are the jobs submitted) and the rest are not started.

    Resources are per job: ``nodes`` × ``tasks_per_node`` ranks (one per GPU on GPU nodes), ``time`` in minutes
    or as ``H:MM:SS`` / ``D-HH:MM:SS``; ``signal_delay_s`` before the limit the job checkpoints and is requeued,
    at most ``max_requeues`` times after time-outs (preemptions always requeue). ``gpu_layout``: ``"node"``, every
    task sees its node's GPUs; ``"task"``, ``srun --gpu-bind=single:1`` binds one GPU to each (Slurm only;
    docs/cluster.md, GPU layouts). ``folder`` holds submitit's
    pickles and logs (default ``<run dir>/submitit``). Every job is appended to ``<run dir>/jobs.tsv`` for
    ``met2net status``. ``dry_run``: check and print the plan, submit nothing, return ``[]``. ``echo`` gets the
    plan and one line per job (None: silent).
    """
    pipeline = plan_pipeline(
        config,
        overrides,
        executor=executor,
        stages=stages,
        rounds=rounds,
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task,
        time=time,
        partition=partition,
        account=account,
        signal_delay_s=signal_delay_s,
        max_requeues=max_requeues,
        gpu_layout=gpu_layout,
        folder=folder,
    )
    echo = echo or _quiet
    echo(pipeline.describe())
    if dry_run:
        echo("dry run: nothing submitted")
        return []
    return pipeline.submit(echo)
