"""Atomic file writes (readers see the previous file or the complete new one, never a partial one), and file
checksums."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from met2net.errors import STORAGE

# The temporary names `atomic_write` gives (``.<name>.<pid>-<8 hex>.tmp``): a run killed mid-write (SIGKILL, a node
# lost) leaves one behind, and the next run recognises it by this pattern alone.
TEMPORARY = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")


def fsync(path: Path) -> None:
    """Flush a file (or a directory entry) to disk, so a rename never publishes an empty file after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a unique hidden temporary name in the same folder, make it durable, then rename
    it over ``path``. The temporary file is removed on any failure (Ctrl-C included); it is not pre-created,
    so the result gets the usual umask permissions. A full or read-only file system is raised as an ``OSError``
    naming ``path`` itself (one line): the writer's own error names the hidden temporary file, and h5py's spans
    several lines of its internals."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{unique_suffix()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even to unlink what is not there
            pass
        if isinstance(e, OSError) and e.errno in STORAGE:
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from e
        raise
    return path


def unique_suffix() -> str:
    """``<pid>-<8 hex>``: unique per call, so concurrent writers never share a temporary name."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def sha256_file(path: Path) -> str:
    """The file's sha256, read through one 1 MiB buffer (memory stays flat beside large reads)."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
