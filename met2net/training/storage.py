"""What went wrong when a checkpoint could not be written, in words a user can act on. Torch-free.

torch's writer reports a full disk as ``[enforce fail at inline_container.cc:…] . unexpected pos …`` or
``basic_ios::clear: iostream error`` — a RuntimeError without an errno, naming neither the cause nor the directory.
So the cause is taken from the error's errno when it has one, and otherwise found by writing a small probe file
into the same directory: a full, read-only or forbidden file system fails the probe the same way. An error whose
probe succeeds is not a storage fault and is raised as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from met2net.data.atomic import atomic_write
from met2net.errors import UserError

CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
ADVICE = {
    "no space left on device": "free space there (older runs; fewer checkpoints with training.keep_last) or set "
    "run.dir on a file system with room",
    "disk quota exceeded": "free space within your quota (quota -s; lfs quota) or set run.dir where you have one",
    "read-only file system": "the file system is mounted read-only: set run.dir on a writable one",
    "permission denied": "this user may not write there: fix the directory's owner or mode (ls -ld), or set run.dir "
    "elsewhere",
}
PROBE_BYTES = 1 << 16


class StorageError(UserError):
    """A file could not be written because of where it goes (full, read-only, forbidden), not because of what it is."""


def existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (a directory that could not be created is not there)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe(directory: Path) -> str | None:
    """Write, fsync and remove a 64 KiB file in ``directory``: the cause (``CAUSES``) if that fails, else None."""
    path = existing(directory) / f".met2net-write-probe-{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, bytes(PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        return CAUSES.get(e.errno)
    finally:
        path.unlink(missing_ok=True)
    return None


def cause(directory: Path, error: BaseException) -> str | None:
    """Why writing into ``directory`` failed with ``error``, if the place is to blame; None otherwise."""
    code = getattr(error, "errno", None)
    return CAUSES[code] if code in CAUSES else probe(directory)


def free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(existing(directory)).free
    except OSError:
        return ""
    return f"{free / 2**20:.1f} MiB free" if free < 2**30 else f"{free / 2**30:.1f} GiB free"


def storage_error(directory: Path, what: str, error: BaseException, after: str = "") -> StorageError | None:
    """A ``StorageError`` naming ``directory``, ``what`` could not be written, the cause, what to do and ``after``
    (e.g. which earlier checkpoint is intact); None when the place is not to blame (then raise ``error`` itself)."""
    found = cause(directory, error)
    if found is None:
        return None
    space = f" ({free_space(directory)})" if found == "no space left on device" else ""
    advice = ADVICE[found][0].upper() + ADVICE[found][1:]
    return StorageError(f"{directory}: cannot write {what}: {found}{space}. {advice}. {after}".strip())


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that cannot be one — a file, or a path through a file — before anything is created."""
    run_dir = Path(run_dir)
    there = existing(run_dir)
    if not there.is_dir():
        where = "is a file" if there == run_dir else f"lies under {there}, which is a file"
        raise StorageError(f"run.dir {run_dir} {where}; set run.dir to a directory (it is created if missing)")


def write_run_file(path: Path, text: str) -> Path:
    """A run directory's own file (``config.yaml``) replaced whole or not at all: a full or read-only disk leaves the
    previous one as it was (a plain write left it empty) and is raised naming ``path`` (``atomic_write``)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))
