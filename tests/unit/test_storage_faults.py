"""A checkpoint that cannot be written — a full disk, a read-only directory — fails with an error naming the directory,
the cause and what to do, and leaves the previous checkpoint intact: the run started again resumes from it. So do the
run's metrics.jsonl and config.yaml, data convert's shards and data stats' stats.json: one line naming the file,
nothing that was there lost or left half-written.

Real faults, no fakes: a 1-process training run on a real tmpfs that fills up, and on a stage directory bind-mounted
read-only (the tests run as root, where chmod stops no write). Without the right to mount they are skipped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from met2net import cli
from met2net.config import load_config
from met2net.data.convert import convert
from met2net.data.netcdf import write_weatherbench_tree
from met2net.errors import error_line
from met2net.train import run_train
from met2net.training.checkpoint import newest_intact, verify
from met2net.training.storage import StorageError
from tests.conftest import small_config
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


# -- the run's log and config, data conversion and statistics -------------------------------------------------------
PAGE = 4096  # tmpfs allocates in pages


def fill(disk: Path, leave_pages: int) -> Path:
    """Fill ``disk`` to the last page, then free ``leave_pages`` pages of it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(PAGE))
        except OSError:
            pass
    os.truncate(filler, (filler.stat().st_size // PAGE - leave_pages) * PAGE)
    return filler


def test_a_full_disk_while_logging_names_metrics_jsonl_and_leaves_whole_records(tmp_path, mounts, capsys):
    """Three pages free: the run lock, config.yaml and one page of metrics.jsonl; the record that does not fit fails
    the run naming the file, and is cut back off (a partial line would merge with the next run's first record)."""
    disk = tmp_path / "disk"
    tmpfs(disk, 1024, mounts)
    run = disk / "run"
    filler = fill(disk, 3)
    args = [*RUN, f"run.dir={run}", "training.progress=false", "training.max_steps=200", "training.log_every=1"]
    args.append("training.checkpoint_every=0")  # the log fills the disk long before step 200's checkpoint
    assert cli.main(["train", str(ROOT / "configs/quickstart.yaml"), *args, "training.val_every=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"met2net: error: no space left on device: {run / 'metrics.jsonl'}; free space there, or write to "
        "another file system"
    ]
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and [r["split"] for r in records(run)][:2] == ["start", "train"]
    assert load_config(run / "config.yaml").training.max_steps == 200
    filler.unlink()
    assert cli.main(["train", str(ROOT / "configs/quickstart.yaml"), *args, "training.max_steps=3"]) == 0
    log = records(run)  # every line still JSON: the new run's records start on a line of their own
    assert (run / "metrics.jsonl").read_text().startswith(text) and [r["split"] for r in log].count("start") == 2


def test_a_full_disk_keeps_config_yaml_whole(tmp_path, mounts, capsys):
    """A full disk when the run writes config.yaml: the error names it and the previous run's file is unchanged (a
    plain write truncated it first, leaving an empty config.yaml)."""
    disk = tmp_path / "disk"
    tmpfs(disk, 1024, mounts)
    run = disk / "run"
    args = [*RUN, f"run.dir={run}", "training.progress=false", "training.max_steps=2"]
    assert cli.main(["train", str(ROOT / "configs/quickstart.yaml"), *args]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    fill(disk, 0)
    capsys.readouterr()
    assert cli.main(["train", str(ROOT / "configs/quickstart.yaml"), *args, "training.max_steps=4"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"met2net: error: no space left on device: {run / 'config.yaml'}; free space there, or write to another file "
        "system"
    ]
    assert (run / "config.yaml").read_bytes() == before["config.yaml"]
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


YEARS, VARIABLES = [2010, 2011], ["u10", "t2m", "r"]


def convert_config(*overrides: str) -> Any:
    return small_config(
        "model.variables=[u10,t2m,r]",
        "model.grid=[16,32]",
        "data.train_years=[2010]",
        "data.val_years=[2011]",
        "data.test_years=[]",
        *overrides,
    )


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_full_disk_during_data_convert_names_the_shard_and_keeps_the_written_ones(tmp_path, mounts):
    """Room for the first year's shard and half the second's: the error names the shard that did not fit (not its
    hidden temporary, not in h5py's several lines), the first shard stays, no temporary is left, and the same command
    with room finishes with the shards of an uninterrupted conversion, byte for byte."""
    tree = tmp_path / "nc"
    write_weatherbench_tree(tree, YEARS, grid=(16, 32), variables=VARIABLES, hours=24)
    convert(tree, convert_config(), tmp_path / "reference", progress=False)
    reference = files(tmp_path / "reference")
    disk = tmp_path / "disk"
    shard = len(reference["2010.h5"])
    tmpfs(disk, (shard + shard // 2) // 1024, mounts)
    out = disk / "shards"
    with pytest.raises(OSError) as failed:
        convert(tree, convert_config(), out, progress=False)
    assert error_line(failed.value) == (
        f"no space left on device: {out / '2011.h5'}; free space there, or write to another file system"
    )
    assert files(out) == {"2010.h5": reference["2010.h5"]}
    mount("-o", f"remount,size={4 * shard // 1024}k", str(disk))
    convert(tree, convert_config(), out, progress=False)
    assert files(out) == reference


def test_statistics_into_a_read_only_shard_directory_name_stats_json_and_keep_the_old(tmp_path, mounts, capsys):
    tree = tmp_path / "nc"
    write_weatherbench_tree(tree, YEARS, grid=(16, 32), variables=VARIABLES, hours=24)
    out = tmp_path / "shards"
    convert(tree, convert_config(), out, progress=False)
    assert cli.main(["data", "stats", str(out), "--train-years", "2010"]) == 0
    before = files(out)
    mount("--bind", str(out), str(out))
    mounts.append(out)
    mount("-o", "remount,bind,ro", str(out))
    capsys.readouterr()
    assert cli.main(["data", "stats", str(out), "--train-years", "2010,2011"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"met2net: error: read-only file system: {out / 'stats.json'}; the file system is mounted read-only: write to "
        "a writable one"
    ]
    assert files(out) == before
