"""The import rules of docs/architecture.md ("what each part must never import"), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "met2net"

# part of the package → module prefixes it must never import (at any depth of the file, lazily or not)
NEVER = {
    "met2net/errors.py": ("met2net.", "torch", "deepspeed", "submitit"),  # the base of user errors imports nothing
    "met2net/config.py": ("met2net.", "torch", "deepspeed", "submitit"),
    "met2net/model": (
        "met2net.training",
        "met2net.launch",
        "met2net.distributed",
        "met2net.data",
        "met2net.compat",
        "met2net.cli",
        "met2net.train",
        "deepspeed",
        "submitit",
    ),
    "met2net/data": ("met2net.training", "met2net.launch", "met2net.model", "met2net.cli", "deepspeed", "submitit"),
    "met2net/distributed": (
        "met2net.training",
        "met2net.launch",
        "met2net.model",
        "met2net.data",
        "met2net.cli",
        "submitit",
    ),
    "met2net/training": ("met2net.launch", "met2net.cli", "met2net.train", "submitit"),
    "met2net/train.py": ("met2net.launch", "met2net.cli", "submitit"),
    "met2net/launch": ("met2net.cli", "met2net.model", "met2net.data", "met2net.distributed", "deepspeed"),
    "met2net/evaluation": (
        "met2net.launch",
        "met2net.cli",
        "met2net.train",
        "met2net.training.loop",
        "met2net.training.build",
        "met2net.training.engine",
        "submitit",
    ),
    # scaling studies are arithmetic on measurements and torch's own collectives: no model, trainer or launcher
    "met2net/scaling": (
        "met2net.training",
        "met2net.train",
        "met2net.launch",
        "met2net.model",
        "met2net.data",
        "met2net.evaluation",
        "met2net.consolidate",
        "met2net.cli",
        "deepspeed",
        "submitit",
    ),
    # a sweep point builds the trainer `met2net train` builds and submits through launch/; it measures with scaling/
    "met2net/study": (
        "met2net.train",
        "met2net.model",
        "met2net.data",
        "met2net.evaluation",
        "met2net.consolidate",
        "met2net.cli",
        "deepspeed",
    ),
    "met2net/compat": ("met2net.training", "met2net.launch", "met2net.model", "met2net.cli"),
    # the preflight runs the checks `met2net train` would meet, with no trainer, launcher or process group
    "met2net/check.py": (
        "met2net.cli",
        "met2net.train",
        "met2net.launch",
        "met2net.training.loop",
        "deepspeed",
        "submitit",
    ),
    # consolidation reads a checkpoint's files alone: no trainer, no launcher, and not DeepSpeed itself
    "met2net/consolidate": (
        "met2net.training.loop",
        "met2net.training.build",
        "met2net.training.stages",
        "met2net.launch",
        "met2net.cli",
        "met2net.train",
        "deepspeed",
        "submitit",
    ),
}
# the launchers may reach training only through its entry point, the requeue exit code and the (torch-free) names
# of checkpoint files
LAUNCH_MAY = ("met2net.train", "met2net.training.preemption", "met2net.training.layout")


# every part may import the base class of user errors: it imports nothing itself
ANYONE_MAY = ("met2net.errors",)


def within(name: str, prefix: str) -> bool:
    """``name`` is module ``prefix`` or inside it ("met2net.train" is not inside "met2net.training")."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.ImportFrom):  # relative imports are not used in the package
            names.append(f"<relative import in {path.name}>")
    return names


@pytest.mark.parametrize("part", list(NEVER))
def test_part_never_imports_what_it_must_not(part):
    target = ROOT / part
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    assert files
    bad = []
    for f in files:
        for name in imports(f):
            if name.startswith("<relative"):
                bad.append(name)
            elif any(within(name, prefix) for prefix in NEVER[part]) and not any(
                within(name, allowed) for allowed in ANYONE_MAY if part != "met2net/errors.py"
            ):
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_launchers_reach_training_only_through_its_entry_point():
    bad = [
        f"{f.relative_to(ROOT)} imports {n}"
        for f in sorted((PACKAGE / "launch").rglob("*.py"))
        for n in imports(f)
        if within(n, "met2net.train") or within(n, "met2net.training")
        if not any(within(n, allowed) for allowed in LAUNCH_MAY)
    ]
    assert bad == []


def test_only_the_command_line_imports_the_command_line():
    bad = [
        str(f.relative_to(ROOT))
        for f in sorted(PACKAGE.rglob("*.py"))
        if f.name != "cli.py" and any(within(n, "met2net.cli") for n in imports(f))
    ]
    assert bad == []


# -- the docs name every module ------------------------------------------------------------------------------------
def modules() -> list[Path]:
    return sorted(f.relative_to(ROOT) for f in PACKAGE.rglob("*.py") if f.name != "__init__.py")


def doc_sections(lines: list[str], start: str) -> dict[str, str]:
    """Entry → its text: each line that starts with ``start`` opens an entry (its first word, backticks stripped),
    the lines after it that do not continue it."""
    sections: dict[str, str] = {}
    key = None
    for line in lines:
        if line.startswith(start):
            key = line.split()[0 if start != "| " else 1].strip("`,")
            sections[key] = sections.get(key, "") + line
        elif key is not None and line.startswith(" "):
            sections[key] += line
        else:
            key = None
    return sections


def named_in(sections: dict[str, str], module: Path) -> bool:
    """``met2net/pkg/file.py`` is named by its own entry, or by its package's entry (``met2net/pkg/``, or an entry of
    another module of the package, e.g. "`met2net/training/rng.py`, `precision.py`") that names ``file.py``."""
    path = module.as_posix()
    if path in sections:
        return True
    folder = module.parent.as_posix() + "/"
    return folder != "met2net/" and any(
        (key == folder or key.startswith(folder) and "/" not in key[len(folder) :]) and module.name in text
        for key, text in sections.items()
    )


def test_the_architecture_table_names_every_module():
    lines = (ROOT / "docs/architecture.md").read_text().splitlines()
    rows = doc_sections([line for line in lines if line.startswith("| `met2net/")], "| ")
    assert [str(m) for m in modules() if not named_in(rows, m)] == []


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    entries = doc_sections(block.splitlines(), "met2net/")
    assert [str(m) for m in modules() if not named_in(entries, m)] == []
    folders = {f"met2net/{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert sorted(folders - set(entries)) == []
