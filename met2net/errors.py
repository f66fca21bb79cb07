"""The one base class of errors a user can fix: bad config, input or data, a damaged or mismatched checkpoint, a
run directory in use, a full or read-only disk. The command line prints them as one line (exit code 2); anything
else is a bug in met2net and keeps its traceback. Imports nothing, so every part of the package (the config
included) may derive from it."""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave or has (config, files, data, disk) that met2net cannot use; the message names it and
    says what to do. A ``ValueError``, so code that caught those before keeps catching these."""
