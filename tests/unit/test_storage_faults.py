"""A checkpoint that cannot be written — a full disk, a read-only directory — fails with an error naming the directory,
the cause and what to do, and leaves the previous checkpoint intact: the run started again resumes from it.

Real faults, no fakes: a 1-process training run on a real tmpfs that fills up, and on a stage directory bind-mounted
read-only (the tests run as root, where chmod stops no write). Without the right to mount they are skipped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from met2net.config import load_config
from met2net.train import run_train
from met2net.training.checkpoint import newest_intact, verify
from met2net.training.storage import StorageError
from tests.e2e.test_train_cli import ROOT, TINY, records

RUN = [*TINY, "training.schedule=stage1", "training.checkpoint_every=2", "training.keep_last=0"]


def train(run: Path, *overrides: str):
    cfg = load_config(ROOT / "configs/quickstart.yaml", [*RUN, f"run.dir={run}", "training.progress=false", *overrides])
    return run_train(cfg)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def mounts(tmp_path):
    """Mount points made by the test, unmounted at its end (innermost first)."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)


def tmpfs(point: Path, size_kib: int, mounts: list[Path]) -> None:
    point.mkdir(parents=True, exist_ok=True)
    try:
        mount("-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point))
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({getattr(e, 'stderr', e)})")
    mounts.append(point)


def used_kib(point: Path) -> int:
    out = subprocess.run(["df", "-k", "--output=used", str(point)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_a_full_disk_names_the_directory_and_keeps_the_previous_checkpoint(tmp_path, mounts):
    disk = tmp_path / "disk"
    tmpfs(disk, 256 * 1024, mounts)
    run = disk / "run"
    assert train(run, "training.max_steps=2").finished
    stage = run / "checkpoints/stage1"
    one_checkpoint = used_kib(disk)
    mount("-o", f"remount,size={one_checkpoint + one_checkpoint // 2}k", str(disk))  # room for half another one
    with pytest.raises(StorageError) as failed:
        train(run, "training.max_steps=4")
    message = str(failed.value)
    assert message.startswith(f"{stage}: cannot write the checkpoint of step 4: no space left on device (")
    assert "set run.dir on a file system with room" in message and f"{stage / 'step_2'}, is untouched" in message
    assert not (stage / "step_4").exists() and not (stage / ".step_4.partial").exists()  # its space given back
    assert verify(stage / "step_2") == [] and newest_intact(stage) == stage / "step_2"
    mount("-o", f"remount,size={4 * one_checkpoint}k", str(disk))
    assert train(run, "training.max_steps=4").finished
    assert [r["step"] for r in records(run) if r["split"] == "resume"] == [2, 2]  # the failed run's, and this one's
    assert verify(stage / "step_4") == []


def test_a_read_only_checkpoint_directory_is_named_and_the_previous_checkpoint_loads(tmp_path, mounts):
    disk = tmp_path / "disk"
    tmpfs(disk, 256 * 1024, mounts)
    run = disk / "run"
    assert train(run, "training.max_steps=2").finished
    stage = run / "checkpoints/stage1"
    mount("--bind", str(stage), str(stage))
    mounts.append(stage)
    mount("-o", "remount,bind,ro", str(stage))
    with pytest.raises(StorageError) as failed:
        train(run, "training.max_steps=4")  # loads step 2 from the read-only directory, then cannot save step 4
    message = str(failed.value)
    assert message.startswith(f"{stage}: cannot write the checkpoint of step 4: read-only file system. ")
    assert "set run.dir on a writable one" in message
    assert [r["step"] for r in records(run) if r["split"] == "resume"] == [2]
    subprocess.run(["umount", str(stage)], check=True, timeout=60)
    mounts.remove(stage)
    assert verify(stage / "step_2") == [] and newest_intact(stage) == stage / "step_2"
    assert train(run, "training.max_steps=4").finished
    assert [r["step"] for r in records(run) if r["split"] == "resume"] == [2, 2]
