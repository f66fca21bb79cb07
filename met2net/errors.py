"""The one base class of errors a user can fix: bad config, input or data, a damaged or mismatched checkpoint, a
run directory in use, a full or read-only disk. The command line prints them as one line (exit code 2); anything
else is a bug in met2net and keeps its traceback (``error_line`` tells them apart). Imports nothing of met2net, so
every part of the package (the config included) may derive from it."""

from __future__ import annotations

import errno


class UserError(ValueError):
    """Something the user gave or has (config, files, data, disk) that met2net cannot use; the message names it and
    says what to do. A ``ValueError``, so code that caught those before keeps catching these."""


STORAGE = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
STORAGE_ADVICE = {
    errno.ENOSPC: "free space there, or write to another file system",
    errno.EDQUOT: "free space within your quota (quota -s; lfs quota), or write where you have one",
    errno.EROFS: "the file system is mounted read-only: write to a writable one",
}


def error_line(e: BaseException) -> str | None:
    """The one line an error the user can fix prints (exit code 2): a ``UserError`` (bad config, input, data or
    checkpoint), a file that is missing, unreadable or a directory, a full or read-only disk. None for anything else:
    a bug, which keeps its traceback."""
    if isinstance(e, OSError) and e.errno in STORAGE:  # the file that could not be written, and what to do
        return f"{STORAGE[e.errno]}: {e.filename or e}; {STORAGE_ADVICE[e.errno]}"
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return f"{(e.strerror or type(e).__name__).lower()}: {e.filename}" if e.filename else str(e)
    if isinstance(e, UserError):
        return str(e)
    return None
