"""Ranks that outlive their launcher stop themselves.

torchrun starts every rank in a session of its own (``start_new_session``), so when torchrun itself is killed
(SIGKILL, an OOM kill, a lost login shell) nothing ends its ranks: they trained on, unsupervised, holding the run
directory and the GPUs. On Linux a rank started by torchrun asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``); SIGTERM is a stop request (``training/preemption.py``), so the ranks agree, write a
checkpoint and exit, and the run can be started again from it. Other launchers end their ranks themselves (srun's
``--wait``, mpirun's daemons).
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


def stop_with_launcher(env: Mapping[str, str] = os.environ) -> bool:
    """Under torchrun on Linux: SIGTERM to this process when its parent (torchrun) dies. True if set. If the parent
    is already gone (this process was re-parented to init before it got here), the SIGTERM is sent now."""
    if not (sys.platform.startswith("linux") and started_by_torchrun(env)):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return True
