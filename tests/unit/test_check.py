"""``met2net check``: a good run passes every check and is not touched; every bad input of the matrix that ``met2net
train`` meets fails its check with the message training would give (exit code 2); the shipped configs are accepted.
Real files (the matrix's tiny shards and 2-step run), the real command in this process."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path

import h5py
import pytest
import yaml

from met2net.check import memory_per_rank
from met2net.config import Config, load_config
from met2net.model.met2net import Met2Net, count_parameters
from tests.unit.test_bad_inputs import (
    CASES,
    ROOT,
    documented,
    holds_in_order,
    make_world,
    run_cli,
    snapshot,
    template,  # noqa: F401 - the module-scoped fixture of tiny shards and a trained run
)

NAMES = ("config", "launch", "model", "data", "run directory", "checkpoint", "step", "plan", "memory")


@pytest.fixture
def world(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:  # noqa: F811
    return make_world(template, tmp_path, monkeypatch)


def check(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict]:
    """``met2net check ARGV --json``: exit code and the checklist by item name."""
    capsys.readouterr()
    code = run_cli(["check", *argv, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] == (code == 0)
    return code, {item["name"]: item for item in doc["checks"]}


def test_a_good_run_passes_every_check_and_nothing_is_written(world, capsys):
    before = snapshot(world["root"])
    code, items = check(capsys, str(world["cfg"]), f"run.dir={world['run']}", "training.max_steps=4")
    assert code == 0 and list(items) == list(NAMES)
    assert {i["status"] for i in items.values()} == {"ok"}
    model = Met2Net(load_config(world["cfg"]).model)
    model.requires_grad_(False)
    model.encoders_q.requires_grad_(True), model.decoders_q.requires_grad_(True)  # stage1 trains the codecs
    assert items["model"]["values"] == {"parameters": count_parameters(model), "trained": count_parameters(model, True)}
    assert items["checkpoint"]["values"] == {"resume_from": str(world["ckpt"])}
    assert items["data"]["values"]["windows"] == {"train": 9, "val": 9}
    assert items["step"]["values"]["activation_bytes_per_sample"] > 0
    assert items["plan"]["values"] == {"micro_batch": 2, "steps": 4, "engine": "plain PyTorch"}
    assert snapshot(world["root"]) == before and not (world["root"] / "new").exists()


def test_the_text_checklist_and_its_exit_code(world, capsys):
    assert run_cli(["check", str(world["cfg"]), "--no-step", "training.init_from={}".format(world["stage"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"met2net check {world['cfg']}" and out[-1] == "every check passed"
    assert any("checkpoint" in line and f"with the weights of {world['stage']} (stage1 step 2)" in line for line in out)
    assert any(line.split()[:2] == ["skip", "step"] for line in out)  # --no-step
    assert run_cli(["check", str(world["cfg"]), "--no-step", "data.val_years=[2013]"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 problem(s): data; fix them before met2net train (exit code 2)"


TRAINING_INPUTS = [i for i, case in CASES.items() if case.argv.startswith(("train ", "config show "))]


@pytest.mark.parametrize("case_id", TRAINING_INPUTS)
def test_every_bad_input_training_meets_fails_its_check(case_id, world, capsys, monkeypatch):
    """The matrix's config, data, checkpoint, launch and run-directory inputs: the check fails with the message
    ``met2net train`` gives (docs/troubleshooting.md), and changes nothing."""
    case = CASES[case_id]
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.setup:
        case.setup(world)
    before = snapshot(world["root"])
    argv = shlex.split(case.argv.format(**world))
    argv = argv[2:] if argv[0] == "config" else argv[1:]
    try:
        code, items = check(capsys, *argv, "--no-step")
    finally:
        if "held" in world:
            os.close(world["held"])
    failed = [i for i in items.values() if i["status"] == "fail"]
    assert code == 2 and failed
    assert any(holds_in_order(i["detail"], documented()[case_id]) for i in failed), failed
    assert snapshot(world["root"]) == before


def test_the_checksums_of_every_shard_on_request(world, capsys):
    """A shard altered inside its data (still a readable HDF5 file with the right times) passes the quick check and
    fails --checksums, named."""
    with h5py.File(world["shards"] / "2011.h5", "r+") as f:
        f["fields"][0, 0, 0, 0] += 1.0
    code, items = check(capsys, str(world["cfg"]), "--no-step")
    assert code == 0
    code, items = check(capsys, str(world["cfg"]), "--no-step", "--checksums")
    assert code == 2 and items["data"]["status"] == "fail"
    assert "2011.h5: checksum mismatch" in items["data"]["detail"] and "2010.h5" not in items["data"]["detail"]


def test_room_for_the_checkpoints_it_keeps(world, capsys):
    code, items = check(capsys, str(world["cfg"]), "--no-step", "training.keep_last=1000000000")
    assert code == 2 and items["run directory"]["status"] == "fail"
    assert (
        "checkpoints of about" in items["run directory"]["detail"]
        and "free space there" in items["run directory"]["detail"]
    )


def test_a_batch_the_ranks_cannot_share(world, capsys):
    code, items = check(capsys, str(world["cfg"]), "--no-step", "--world-size", "4")
    assert code == 2 and items["plan"]["status"] == "fail" and items["memory"]["status"] == "skip"
    assert (
        "'training.batch_size' 2 is not divisible by deepspeed.gradient_accumulation (1) × ranks (4)"
        in (items["plan"]["detail"])
    )


def test_activation_checkpointing_saves_less_for_backward(world, capsys):
    sizes = {}
    for on in (False, True):
        code, items = check(capsys, str(world["cfg"]), f"deepspeed.activation_checkpointing={str(on).lower()}")
        assert code == 0
        sizes[on] = items["step"]["values"]["activation_bytes_per_sample"]
    assert 0 < sizes[True] < sizes[False]


def test_memory_per_rank_by_zero_stage():
    """1000 parameters of which 400 trained, 4 ranks, 10 bytes of activations: by hand."""
    assert memory_per_rank(1000, 400, 0, 1, False, 10) == {
        "weights": 4000,
        "gradients": 1600,
        "optimizer": 3200,
        "activations": 10,
        "total": 8810,
    }
    by_stage = [memory_per_rank(1000, 400, z, 4, True, 10) for z in range(4)]
    assert [m["optimizer"] for m in by_stage] == [3200, 800 + 400, 1200, 1200]  # Adam moments / 4, fp32 master / 4
    assert [m["gradients"] for m in by_stage] == [1600, 1600, 400, 400]
    assert [m["weights"] for m in by_stage] == [4000, 4000, 4000, 1000]
    assert [m["total"] for m in by_stage] == [8810, 6810, 5610, 2610]


SECTIONS = {f.name for f in dataclasses.fields(Config)}
TRAINING_CONFIGS = sorted(
    p for p in (ROOT / "configs").glob("*.yaml") if set(yaml.safe_load(p.read_text())) <= SECTIONS
)


@pytest.mark.parametrize("config", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_the_shipped_configs_are_accepted(config, tmp_path, capsys, monkeypatch):
    """Every shipped training config passes; only its data may be absent here (the WeatherBench shards, say), and then
    the data check names the directory to fill. Without the timed step: a 128×256 model's takes long on 2 cores."""
    monkeypatch.chdir(ROOT)
    code, items = check(capsys, str(config), f"run.dir={tmp_path / 'run'}", "--no-step")
    data = Path(load_config(config).data.path)
    problems = {n: i["detail"] for n, i in items.items() if i["status"] != "ok" and n != "step"}
    if (data / "index.json").is_file():
        assert code == 0 and problems == {}
    else:
        assert problems == {
            "data": f"{data}/index.json: not found; is this a shard directory? (re-run met2net data convert)"
        }
