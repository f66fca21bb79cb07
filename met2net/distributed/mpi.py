"""MPI for the data tools (conversion, statistics), only when a launcher started several ranks."""

from __future__ import annotations

import os

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def world_comm():
    """``MPI.COMM_WORLD`` under ``mpirun``/``srun`` with more than one rank, else None — without
    initialising MPI at all in a plain single process."""
    if not any(v in os.environ for v in _LAUNCHER_VARS):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
