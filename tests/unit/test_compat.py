"""Dependency versions: the ranges pinned in pyproject.toml are the ones checked at start-up, and a version
outside them is refused with the command that fixes it."""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from met2net import compat

ROOT = Path(__file__).resolve().parents[2]


def test_pinned_ranges_are_the_checked_ones_and_the_installed_versions_fit():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {m.group(1): m.group(2) for m in (re.match(r"([a-z]+)(.*)", d) for d in deps)}
    assert {name: pinned[name] for name in compat.TESTED} == compat.TESTED
    compat.check_versions()  # the installed versions are the tested ones


def test_a_version_outside_the_range_is_refused_with_the_fix(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(compat.metadata, "version", lambda name: "0.21.0" if name == "deepspeed" else real(name))
    monkeypatch.delenv(compat.ALLOW_UNTESTED, raising=False)
    with pytest.raises(RuntimeError, match=r"deepspeed 0.21.0 is installed.*pip install 'deepspeed>=0.19.8,<0.20'"):
        compat.check_versions("deepspeed")
    monkeypatch.setenv(compat.ALLOW_UNTESTED, "1")
    with pytest.warns(UserWarning, match="deepspeed 0.21.0"):
        compat.check_versions("deepspeed")


PRIVATE = {
    "ds_tensor",
    "ds_numel",
    "GatheredParameters",
    "__compatible_ops__",
    "_usr_sig",
    "_make_submission_file_text",
    "_submitit_command_str",
}


def test_private_internals_are_used_only_in_the_compat_package():
    """DeepSpeed's ZeRO-3 attributes, op table and checkpoint modules and submitit's underscore functions are used
    nowhere else in the package (the compat tests' list of names would catch a new one only if added here)."""
    offenders = []
    for path in (ROOT / "met2net").rglob("*.py"):
        if "compat" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("deepspeed.", "submitit.")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
    assert offenders == []


DEEPSPEED_FILE_LAYOUT = (
    "_optim_states",
    "_model_states",
    "single_partition_of_fp32_groups",
    "fp32_flat_groups",
    "frozen_param_",
    "param_shapes",
    "param_slice_mappings",
    "base_optimizer_state",
)


def test_deepspeed_checkpoint_files_are_read_only_in_the_compat_package():
    """DeepSpeed's checkpoint file names and keys (what consolidation reads) are named in met2net/compat only."""
    offenders = []
    for path in (ROOT / "met2net").rglob("*.py"):
        if "compat" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(key in node.value for key in DEEPSPEED_FILE_LAYOUT):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert offenders == []


# the torch.load calls that may unpickle more than data, each with the comment in the source that says why
NOT_WEIGHTS_ONLY = {
    "met2net/compat/deepspeed_internals.py": 2,  # DeepSpeed's optimizer and engine state name DeepSpeed objects
    "met2net/consolidate/reference.py": 2,  # weights_only=trust_pickle: only with --trust-pickle
}


def test_every_torch_load_is_weights_only_or_says_why():
    """Issue 16, item 7: ``torch.load`` loads data only (``weights_only=True``), except where DeepSpeed's own files
    or the user's explicit --trust-pickle need more; those calls are counted here and carry a comment."""
    others: dict[str, int] = {}
    for path in sorted((ROOT / "met2net").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"):
                continue
            flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert flag is not None, f"{where}: torch.load without weights_only"
            if isinstance(flag, ast.Constant) and flag.value is True:
                continue
            said = " ".join(lines[node.lineno - 3 : node.end_lineno])
            assert "#" in said, f"{where}: torch.load that may unpickle objects, without a comment saying why"
            others[str(path.relative_to(ROOT))] = others.get(str(path.relative_to(ROOT)), 0) + 1
    assert others == NOT_WEIGHTS_ONLY


def test_load_data_takes_numpy_and_refuses_code(tmp_path):
    import numpy as np
    import torch

    state = {"numpy": np.random.get_state(), "x": np.float64(1.5), "t": torch.arange(3)}
    torch.save(state, tmp_path / "data.pt")
    loaded = compat.load_data(tmp_path / "data.pt")
    assert np.array_equal(loaded["numpy"][1], state["numpy"][1]) and loaded["x"] == 1.5

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"x": Payload()}, tmp_path / "hostile.pt")
    with pytest.raises(Exception, match="Unsupported global") as error:
        compat.load_data(tmp_path / "hostile.pt")
    assert type(error.value).__name__ == "UnpicklingError" and not (tmp_path / "pwned").exists()
