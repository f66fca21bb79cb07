"""What the command line prints when a command fails: one line and exit code 2 for what the user can fix, the
traceback for a bug in met2net."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from met2net import cli
from met2net.config import ConfigError
from met2net.errors import UserError
from met2net.training.layout import CheckpointError

ROOT = Path(__file__).resolve().parents[2]


def _met2net(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_bad_config_is_one_line_and_exit_code_2():
    main = "cli.main(['config', 'show', 'configs/quickstart.yaml', 'training.lr=-1'])"
    out = _met2net(f"import sys; from met2net import cli; sys.exit({main})")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "met2net: error: configs/quickstart.yaml + command line: 'training.lr' must be > 0, got -1.0"
    ]


def test_a_programming_error_shows_its_traceback():
    """A plain ValueError raised inside a command is a bug: it is not dressed up as a user error."""
    code = (
        "import sys; from met2net import cli\n"
        "def broken(args):\n"
        "    raise ValueError('operands could not be broadcast together')\n"
        "cli.cmd_config_show = broken\n"
        "sys.exit(cli.main(['config', 'show', 'configs/quickstart.yaml']))\n"
    )
    out = _met2net(code)
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr and "in broken" in out.stderr
    assert "ValueError: operands could not be broadcast together" in out.stderr
    assert "met2net: error" not in out.stderr


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (UserError("run.dir is in use"), "run.dir is in use"),
        (CheckpointError("step_6: damaged"), "step_6: damaged"),
        (FileNotFoundError(errno.ENOENT, "No such file", "/data/x.nc"), "no such file: /data/x.nc"),
        (PermissionError(errno.EACCES, "Permission denied", "/runs/a"), "permission denied: /runs/a"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/runs/a"), "is a directory: /runs/a"),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/a/x.pt"), "no space left on device: /runs/a/x.pt"),
    ],
)
def test_errors_the_user_can_fix_are_one_line(monkeypatch, capsys, error, line):
    def failing(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_config_show", failing)
    assert cli.main(["config", "show", "configs/quickstart.yaml"]) == 2
    assert capsys.readouterr().err.splitlines()[0].startswith(f"met2net: error: {line}")


@pytest.mark.parametrize("error", [ValueError("shape mismatch"), KeyError("step"), OSError(errno.EIO, "I/O error")])
def test_other_errors_propagate(monkeypatch, error):
    def failing(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_config_show", failing)
    with pytest.raises(type(error)):
        cli.main(["config", "show", "configs/quickstart.yaml"])


def test_the_errors_users_fix_share_one_base():
    from met2net.compat.torch_files import FileFormatError
    from met2net.consolidate.format import ConsolidateError
    from met2net.data.datasets import SplitTooShort
    from met2net.data.reconvert import ConversionChanged
    from met2net.data.shards import ShardError
    from met2net.distributed.devices import DeviceBindingError
    from met2net.training.run_lock import RunDirInUse
    from met2net.training.storage import StorageError

    for cls in (ConfigError, CheckpointError, ConsolidateError, FileFormatError, DeviceBindingError, RunDirInUse):
        assert issubclass(cls, UserError), cls
    for cls in (ShardError, SplitTooShort, ConversionChanged, StorageError):
        assert issubclass(cls, UserError), cls
