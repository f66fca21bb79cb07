"""Where a run's records go: one JSON line each in ``<run>/metrics.jsonl`` (what ``met2net status`` and
``met2net plot losses`` read), and with ``training.tensorboard: true`` the numbers of the train and validation
records as TensorBoard scalars too, for users who watch runs there.

The events go to ``<run>/tensorboard/<schedule>/`` (TensorBoard shows stage one and stage two as two runs whose
steps each start at 1) under the tags ``<split>/<key>`` (``train/loss``, ``val/forecast_mse/t2m``). A resumed run
writes a new event file whose first event tells TensorBoard to drop the earlier file's events from that step on:
the steps the stopped run logged after its checkpoint are logged again by the resumed one. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any

from tqdm import tqdm

SCALAR_SPLITS = ("train", "val")
NOT_SCALARS = ("step", "time")  # the event's step and wall time, not values of their own


class RunLog:
    """Appends records to ``metrics.jsonl``; with a ``tensorboard_dir``, also writes their scalars as events."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self.path, self.tensorboard_dir = Path(path), tensorboard_dir
        self._writer: Any = None  # torch.utils.tensorboard.SummaryWriter, opened with the first scalar record
        if tensorboard_dir is not None:  # a missing package stops the run at start-up, not at its first record
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError as e:
                raise ImportError(
                    f"training.tensorboard: true needs the tensorboard package ({e}); pip install tensorboard, "
                    "or set training.tensorboard=false"
                ) from None

    def write(self, record: dict[str, Any]) -> None:
        """One record, on disk when this returns (events flushed too: a killed job loses nothing it logged). A write
        that fails (full disk, read-only file system) is cut back off, so the file stays whole lines — the records
        before it readable, and the next run's appended after a line end — and is raised naming the file (the
        buffered writer's error names none)."""
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
            except OSError as e:
                os.ftruncate(fd, start)
                raise OSError(e.errno, e.strerror, str(self.path)) from e
        finally:
            os.close(fd)
        if self.tensorboard_dir is not None and record.get("split") in SCALAR_SPLITS:
            self._write_scalars(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_scalars(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run logs again every step from its first record on; TensorBoard hides what an
            # earlier event file has at those steps
            self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=step)
            weakref.finalize(self, self._writer.close)  # its writer thread and file end with the run's log
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._writer.add_scalar(f"{record['split']}/{key}", value, step, walltime=record.get("time"))
        self._writer.flush()


def progress_bar(total: int, initial: int, name: str, quiet: bool) -> tqdm:
    """The run's progress on the terminal (off when ``quiet``, and without a TTY); the loop sets the loss and
    samples/s it shows at log points only."""
    return tqdm(
        total=total,
        initial=initial,
        desc=name,
        disable=True if quiet else None,  # None: tqdm stays off without a TTY
        dynamic_ncols=True,
        mininterval=1.0,
    )


def device_memory(device: Any) -> dict[str, float]:
    """On a GPU, the most memory the run's tensors have held so far (``torch.cuda.max_memory_allocated``, GiB;
    what a larger batch or another ZeRO stage is judged by); nothing on the CPU."""
    if device.type != "cuda":
        return {}
    import torch

    return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}


def regressions(start: dict[str, float], end: dict[str, float]) -> dict[str, list[float]]:
    """The validation forecast errors (``forecast_mse``, overall and per variable) that ``end`` has larger than
    ``start``: {key: [start, end]}."""
    return {k: [start[k], v] for k, v in end.items() if k.startswith("forecast_mse") and k in start and v > start[k]}


def regression_warning(schedule: str, started_from: str, worse: dict[str, list[float]]) -> str:
    details = ", ".join(f"{k} {a:.5g} → {b:.5g}" for k, (a, b) in worse.items())
    return (
        f"met2net: warning: {schedule} ended with a worse validation forecast than the weights it started from "
        f"({started_from}): {details}"
    )
