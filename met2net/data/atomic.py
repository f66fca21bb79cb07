"""Atomic file writes (readers see the previous file or the complete new one, never a partial one), file checksums,
and the exclusive file lock that names its holder (one run per run directory, one conversion per shard directory)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def atomic_write(
    path: Path, write: Callable[[Path], None], *, sync_dir: bool = True, publisher: Publisher | None = None
) -> Path:
    """Run ``write(tmp)`` on a unique hidden temporary name in the same folder, make it durable, then rename
    it over ``path`` and make the rename durable (``sync_dir=False``: the caller fsyncs the folder later, once
    for many files, before anything that names them is published). The temporary file is removed on any failure
    (Ctrl-C included); it is not pre-created, so the result gets the usual umask permissions. A full or read-only
    file system is raised as an ``OSError`` naming ``path`` itself (one line): the writer's own error names the
    hidden temporary file, and h5py's spans several lines of its internals. With a ``publisher`` the flush and the
    rename happen on its thread, while the caller goes on (`Publisher`); ``path`` exists once it has finished."""
    _atomic(Path(path), write, sync_dir, publisher, digest=False)
    return Path(path)


def _atomic(
    path: Path, write: Callable[[Path], None], sync_dir: bool, publisher: Publisher | None, digest: bool
) -> str | None | Future[str | None]:
    """`atomic_write` and `atomic_write_sha256`: write the temporary file here, then finish it (`_finish`) here or on
    the publisher's thread; the sha256 when ``digest``, or its future with a publisher."""
    tmp = path.with_name(f".{path.name}.{unique_suffix()}.tmp")
    with _removed_on_failure(tmp, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
    if publisher is not None:
        return publisher.submit(tmp, path, digest)
    sha = _finish(tmp, path, digest)
    if sync_dir:
        with _removed_on_failure(tmp, path):
            fsync(path.parent)
    return sha


def _finish(tmp: Path, path: Path, digest: bool) -> str | None:
    """The complete temporary file's sha256 (when ``digest``: read after asking the kernel to start writing the file
    to disk, so the flush that follows has little left to wait for), then its flush and its rename into place (a
    crash never publishes an empty file); ``tmp`` removed on failure."""
    with _removed_on_failure(tmp, path):
        sha = None
        if digest:
            with open(tmp, "rb", buffering=0) as f:
                start_writeback(f.fileno())
                sha = _sha256_of(f)
        fsync(tmp)
        os.replace(tmp, path)
        return sha


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Remove ``tmp`` when the block fails, and raise a full or read-only file system as an ``OSError`` naming
    ``path`` (`atomic_write`)."""
    try:
        yield
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even to unlink what is not there
            pass
        if isinstance(e, OSError) and e.errno in STORAGE:
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from e
        raise


class Publisher:
    """Flushes finished temporary files and renames them into place on one background thread, in the order they
    were handed over, so that a writer of many files (a conversion's shards) reads and writes the next while the
    disk flushes the last: on small shards the flush was a third of the conversion's time (docs/performance.md).
    Each file is still flushed before its rename, and a failed one is removed. Use as a context manager: leaving it
    waits for every file and raises the first failure (naming the file), unless an error is already on its way; a
    failure also stops the next ``submit``, so a full disk ends the writer at its next file. The caller fsyncs the
    folder after leaving it, before anything that names the files is published."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="met2net-publish")
        self._jobs: list[Future[str | None]] = []

    def submit(self, tmp: Path, path: Path, digest: bool = False) -> Future[str | None]:
        """Flush ``tmp`` and rename it to ``path`` after the files handed over before; if one of those has failed
        already, remove ``tmp`` and raise that failure. ``digest``: first take the file's sha256 there too (the
        future's result; None without), so the hashing also runs beside the writer's next file."""
        failed = self._failure()
        if failed is not None:
            tmp.unlink(missing_ok=True)
            raise failed
        job = self._pool.submit(_finish, tmp, path, digest)
        self._jobs.append(job)
        return job

    def _failure(self) -> BaseException | None:
        """The first failure among the files finished so far."""
        return next((job.exception() for job in self._jobs if job.done() and job.exception() is not None), None)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._pool.shutdown(wait=True)  # every file finished
        failed = self._failure()
        if kind is None and failed is not None:
            raise failed


def atomic_write_sha256(
    path: Path, write: Callable[[Path], None], *, sync_dir: bool = True, publisher: Publisher | None = None
) -> str | Future[str]:
    """`atomic_write`, returning the file's sha256 (for an index), taken from the complete temporary file before it
    is renamed to ``path``. The kernel is first asked to start writing the file to disk (`start_writeback`), so the
    flush that follows the hashing has little left to wait for: hashing is CPU work, writing waits on the disk, and
    the two overlap instead of following each other. With a ``publisher`` the hashing, the flush and the rename run
    on its thread (`Publisher`), and the sha256 is returned as a future."""
    return _atomic(Path(path), write, sync_dir, publisher, digest=True)


def _sync_file_range() -> Callable[..., int] | None:
    """Linux's ``sync_file_range`` from the C library, or None (another system, or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing the dirty pages, do not wait (linux/fs.h)


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages to disk now, without waiting (a hint: it makes a later
    ``fsync`` shorter, never replaces it; nothing where ``sync_file_range`` is missing, and its errors are ignored,
    as the ``fsync`` reports any that matter)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def unique_suffix() -> str:
    """``<pid>-<8 hex>``: unique per call, so concurrent writers never share a temporary name."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def sha256_file(path: Path) -> str:
    """The file's sha256, read through one 1 MiB buffer (memory stays flat beside large reads)."""
    return _sha256_of(open(path, "rb", buffering=0))


def _sha256_of(f: io.RawIOBase) -> str:
    """The sha256 of what is left to read in ``f``, which is closed after."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buffer)
    with f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


class LockHeld(Exception):
    """Another live process holds the lock; ``holder`` is what it recorded in the lock file ({} while it starts)."""

    def __init__(self, holder: dict[str, Any]):
        super().__init__(holder)
        self.holder = holder


# flock's answers on file systems that do not support it (some NFS and Lustre mounts)
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def take_lock(path: Path, unguarded: str) -> int | None:
    """Open ``path`` (created if missing) and take its exclusive ``flock`` without waiting: the descriptor, which
    holds the lock until closed or until this process ends (the kernel drops it: a killed holder leaves nothing to
    clean). ``LockHeld`` with the recorded holder when another process has it. None, after a warning that
    ``unguarded`` (what now goes unprotected), on a file system without ``flock``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = recorded_holder(fd)
        os.close(fd)
        raise LockHeld(holder) from None
    except OSError as e:
        os.close(fd)
        if e.errno not in NO_LOCKS:
            raise
        print(
            f"met2net: warning: {path}: the file system does not support locks ({e.strerror}); {unguarded}",
            file=sys.stderr,
        )
        return None
    return fd


def record_holder(fd: int, holder: dict[str, Any]) -> None:
    """Write who holds the lock into its file, for the refusal a second process shows."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def recorded_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote; {} while it has written nothing (or something unreadable)."""
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    try:
        info = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}
