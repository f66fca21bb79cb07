"""submitit internals met2net relies on (tested with the versions in ``met2net.compat``).

submitit's public API submits a function and waits for it; met2net also needs the time-limit signal of a job,
submitit's own checkpoint-and-requeue handler for it (training installs its handlers over it), the batch script
it would give ``sbatch`` (shown for review and golden-tested) and how a finished local job ended (``met2net
status``). None of these is documented API: each function below says what it relies on, so that a submitit
upgrade that moves one breaks here, in one place.
"""

from __future__ import annotations

import functools
import pickle
import signal
from collections.abc import Callable
from pathlib import Path

import submitit


def time_limit_signal() -> signal.Signals:
    """The signal submitit sends a job ``signal_delay_s`` before its time limit (SIGUSR2 unless the
    ``SUBMITIT_PREEMPT_SIGNAL`` environment variable names another).

    Relies on the private classmethod ``JobEnvironment._usr_sig()`` (submitit/core/job_environment.py)."""
    return submitit.JobEnvironment._usr_sig()


def requeue_handler() -> Callable[[], None] | None:
    """submitit's checkpoint-and-requeue, taken before training replaces the signal handlers; calling the result
    later does what submitit does on its time-limit signal: on rank 0, pickle ``job.checkpoint()``'s resubmission,
    requeue the job (``scontrol requeue`` on Slurm, a restart on the local executor) unless it timed out more than
    ``max_num_timeout`` times, and exit. None when no such handler is installed (not inside a submitit job).

    Relies on submitit installing ``SignalHandler.checkpoint_and_try_requeue`` for ``time_limit_signal()`` in
    ``JobEnvironment._handle_signals`` before it calls the job (submitit/core/submission.py), and on that handler
    accepting ``(signum, frame)`` with frame None."""
    warning = time_limit_signal()
    handler = signal.getsignal(warning)
    return functools.partial(handler, warning, None) if callable(handler) else None


def sbatch_script(executor: submitit.SlurmExecutor) -> str:
    """The batch script ``executor`` would hand to ``sbatch`` for its next submission, with its current parameters.

    Relies on the private ``SlurmExecutor._make_submission_file_text(command, uid)`` (which ignores uid) and the
    private property ``_submitit_command_str`` (the ``python -u -m submitit.core._submit FOLDER`` command)."""
    return executor._make_submission_file_text(executor._submitit_command_str, "<uid>")


def local_outcome(log: str | Path, job_id: str) -> str | None:
    """How a job of submitit's local executor ended: ``"success"`` or ``"error"``, None while no result is written
    (still running, or killed). ``log`` is the job's rank-0 log (``<folder>/<job id>_0_log.out``).

    Relies on submitit writing ``<folder>/<job id>_<task>_result.pkl`` next to the logs when a task ends, holding
    the pickled tuple ``(outcome, result)`` (``JobPaths.result_pickle``, ``Job._get_outcome_and_result``)."""
    result = Path(log).with_name(f"{job_id}_0_result.pkl")
    if not result.exists():
        return None
    with result.open("rb") as f:
        return pickle.load(f)[0]
