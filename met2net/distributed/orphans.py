"""Ranks that outlive their launcher stop themselves.

torchrun starts every rank in a session of its own (``start_new_session``), so when torchrun itself is killed
(SIGKILL, an OOM kill, a lost login shell) nothing ends its ranks: they trained on, unsupervised, holding the run
directory and the GPUs. Open MPI's mpirun (5.x, PRRTE) is no different: its ranks are its children, and a SIGKILLed
mpirun leaves them running, re-parented to init (met2net's ranks talk over gloo, not MPI, so nothing of MPI notices).
On Linux a rank started by either asks the kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
SIGTERM is a stop request (``training/preemption.py``), so the ranks agree, write a checkpoint and exit, and the run
can be started again from it. Under srun the parent is slurmstepd, which ends the step's tasks itself when srun is
gone; the request is made there too (slurmstepd dying is then a stop as well), at no cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Mapping

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def started_by_torchrun(env: Mapping[str, str]) -> bool:
    """torchrun's agent sets ``TORCHELASTIC_RUN_ID`` for the workers it starts (and only for them)."""
    return bool(env.get("TORCHELASTIC_RUN_ID"))


def launcher(env: Mapping[str, str]) -> str | None:
    """The launcher that is this process's parent: "torchrun", "mpirun" (Open MPI sets ``OMPI_COMM_WORLD_RANK`` for
    the processes its mpirun or daemons start), "srun" (slurmstepd, ``SLURM_STEP_ID``), or None (started by hand)."""
    if started_by_torchrun(env):
        return "torchrun"
    if env.get("OMPI_COMM_WORLD_RANK"):
        return "mpirun"
    if env.get("SLURM_STEP_ID") and env.get("SLURM_PROCID"):
        return "srun"
    return None


def stop_with_launcher(env: Mapping[str, str] = os.environ) -> bool:
    """Under a launcher on Linux: SIGTERM to this process when its parent (torchrun, mpirun or its daemon,
    slurmstepd) dies. True if set. If the parent is already gone (this process was re-parented to init before it got
    here), the SIGTERM is sent now."""
    if not (sys.platform.startswith("linux") and launcher(env)):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return True
