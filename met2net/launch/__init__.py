"""Launchers: job plans, submitit submission, job records and status. They run `met2net train`; they
know nothing of the model.

The Python API (``met2net.launch.pipeline``, docs/cluster.md "From Python"): ``submit_pipeline`` submits the
stage-one → stage-two pipeline (Slurm or this machine) and returns the jobs; ``plan_pipeline`` checks and plans
without submitting. They are imported on first use: ``python -m met2net.launch.plan``, which slurm/pipeline.sh
runs, then imports only the plan (quick, no submitit), and only once (no "found in sys.modules" warning).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from met2net.launch.pipeline import Pipeline, SubmittedJob, plan_pipeline, submit_pipeline
    from met2net.launch.submit import JobFailed

__all__ = ["JobFailed", "Pipeline", "SubmittedJob", "plan_pipeline", "submit_pipeline"]
_HOME = {
    "JobFailed": "met2net.launch.submit",
    "Pipeline": "met2net.launch.pipeline",
    "SubmittedJob": "met2net.launch.pipeline",
    "plan_pipeline": "met2net.launch.pipeline",
    "submit_pipeline": "met2net.launch.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
