"""``met2net submit``: the stage-one → stage-two pipeline as submitit jobs (Slurm, or this machine).

Each job runs ``met2net train`` in-process on every task (``TrainJob``). Training owns the signals:
SIGUSR2 (submitit's time-limit warning) or SIGUSR1/SIGTERM make every rank write a checkpoint and
stop. Then rank 0 hands over to submitit's own handler, which pickles the job again and requeues it
(``scontrol requeue`` on Slurm, a restart on the local executor) unless it timed out more than
``max_requeues`` times; the restarted job resumes from the checkpoint. After SIGTERM (``scancel``,
``scontrol requeue``, preemption) Slurm is already ending or requeuing the job, so nobody requeues.
The launcher knows the ``met2net train`` command, never the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import submitit

from met2net.compat import check_versions, submitit_internals
from met2net.errors import UserError
from met2net.launch.jobs import JobRecord, append_records
from met2net.launch.plan import Job, Resources
from met2net.training.preemption import REQUEUE_EXIT_CODE


@dataclass
class TrainJob(submitit.helpers.Checkpointable):
    config: str | None
    overrides: tuple[str, ...]

    def __call__(self) -> str:
        from met2net.config import load_config
        from met2net.train import run_train

        env = submitit.JobEnvironment()
        if env.cluster == "local":  # Slurm tasks find their rank from SLURM_* (distributed/env.py)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        requeue = submitit_internals.requeue_handler()  # before training installs its own signal handlers
        result = run_train(load_config(self.config, list(self.overrides)))
        code, stopped_by = result.exit_code, result.stopped_by
        if code == 0:
            return [o for o in self.overrides if o.startswith("run.dir=")][-1].partition("=")[2]  # the plan's, last
        if code == REQUEUE_EXIT_CODE:
            if stopped_by != "SIGTERM" and env.global_rank == 0 and requeue is not None:
                requeue()  # pickles checkpoint()'s resubmission, requeues, exits
            sys.exit(code)
        raise RuntimeError(f"met2net train {self.config} {' '.join(self.overrides)} exited with code {code}")

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """The same command again: training resumes from its latest COMPLETE checkpoint by itself."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.overrides))


def make_executor(kind: str, folder: Path, res: Resources) -> submitit.Executor:
    check_versions("submitit")  # its internals are used (met2net/compat/submitit_internals.py)
    if kind == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=res.max_requeues)
        executor.update_parameters(
            timeout_min=res.time_min,
            tasks_per_node=res.num_tasks,
            gpus_per_node=res.gpus_per_node,
            signal_delay_s=res.signal_delay_s,
            stderr_to_stdout=True,
        )
        return executor
    if kind != "slurm":
        raise UserError(f"--executor {kind!r}: expected slurm or local")
    executor = submitit.SlurmExecutor(folder, max_num_timeout=res.max_requeues)
    executor.update_parameters(
        nodes=res.nodes,
        ntasks_per_node=res.tasks_per_node,
        cpus_per_task=res.cpus_per_task,
        time=res.time_min,
        signal_delay_s=res.signal_delay_s,
        stderr_to_stdout=True,
        setup=[f"export OMP_NUM_THREADS={res.cpus_per_task}"],
    )
    if res.srun_args:
        executor.update_parameters(srun_args=list(res.srun_args))
    for key, value in (("gpus_per_node", res.gpus_per_node), ("partition", res.partition), ("account", res.account)):
        if value:
            executor.update_parameters(**{key: value})
    return executor


def slurm_parameters(job: Job, after_id: str | None) -> dict:
    extra: dict = {"requeue": True}
    if after_id is not None:
        extra["dependency"] = f"afterok:{after_id}"
    return {"job_name": job.name, "additional_parameters": extra}


class JobFailed(RuntimeError):
    """A job of a local pipeline failed, so the jobs after it were not started. ``handles``: the jobs submitted,
    the failed one last; the message names the job, its log and the job's own error."""

    def __init__(self, message: str, handles: list[submitit.Job]) -> None:
        super().__init__(message)
        self.handles = handles


def submit(
    jobs: list[Job],
    config: str | None,
    res: Resources,
    kind: str,
    folder: Path,
    records_dir: Path,
    echo: Callable[[str], object] = print,
) -> list[tuple[JobRecord, submitit.Job]]:
    """Submit the plan; append each job to ``records_dir/jobs.tsv`` as soon as it is queued. Slurm chains the jobs
    with afterok dependencies and returns at once; the local executor has no dependencies, so each job runs to its
    end before the next one starts, and a failed one raises ``JobFailed`` instead of starting the rest."""
    executor = make_executor(kind, folder, res)
    submitted: list[tuple[JobRecord, submitit.Job]] = []
    for job in jobs:
        if kind == "slurm":
            after = submitted[job.after][0].job_id if job.after is not None else None
            executor.update_parameters(**slurm_parameters(job, after))
        handle = executor.submit(TrainJob(config, job.overrides))
        record = JobRecord(
            handle.job_id, kind, job.name, job.schedule, job.round, job.run_dir, str(handle.task(0).paths.stdout)
        )
        submitted.append((record, handle))
        append_records(records_dir, [record])
        echo(f"submitted {job.name}: job {record.job_id}, log {record.log}")
        if kind == "local":
            try:
                handle.results()
            except Exception as error:  # submitit re-raises the job's failure with its traceback
                raise JobFailed(
                    f"{job.name} (job {record.job_id}) failed; the jobs after it were not started. "
                    f"Log: {record.log}\n{error}",
                    [h for _, h in submitted],
                ) from None
            echo(f"{job.name} finished")
    return submitted


def render_sbatch(job: Job, res: Resources, folder: Path, after_id: str | None = None) -> str:
    """The batch script submitit writes for ``job`` on Slurm (what ``sbatch`` will get), for review and tests."""
    executor = make_executor("slurm", folder, res)
    executor.update_parameters(**slurm_parameters(job, after_id))
    return submitit_internals.sbatch_script(executor)
