"""MPI for the data tools (conversion, statistics), only when a launcher started several ranks."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def world_comm() -> Comm | None:
    """``MPI.COMM_WORLD`` under ``mpirun``/``srun`` with more than one rank, else None — without
    initialising MPI at all in a plain single process."""
    if not any(v in os.environ for v in _LAUNCHER_VARS):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
