"""Sweep files (met2net/scaling/sweep.py) and results.csv rows (met2net/scaling/results.py), without training."""

import csv

import pytest

from met2net.config import load_config
from met2net.errors import UserError
from met2net.scaling import results
from met2net.scaling.sweep import PointSpec, config_hash, parse_ranks, parse_sweep, point_overrides

SWEEP = {
    "config": "configs/quickstart.yaml",
    "overrides": ["data.source=synthetic"],
    "warmup_steps": 2,
    "timed_steps": 5,
    "grid": {"ranks": [1, "2x1"], "zero_stage": [0, 3], "micro_batch": [2]},
    "points": [{"ranks": 2, "accumulation": 2, "precision": "bf16", "activation_checkpointing": True}],
}


def test_grid_and_points():
    sweep = parse_sweep(SWEEP)
    assert [p.name for p in sweep.points] == [
        "r1x1-z0-mb2-ga1-fp32",
        "r1x1-z3-mb2-ga1-fp32",
        "r2x1-z0-mb2-ga1-fp32",
        "r2x1-z3-mb2-ga1-fp32",
        "r1x2-z0-mb1-ga2-bf16-ac",  # axes it does not name take their defaults
    ]
    last = sweep.points[-1]
    assert (last.world_size, last.global_batch) == (2, 4)
    assert sweep.total_steps == 7 and sweep.num_losses == 5 and sweep.time_communication


def test_ranks():
    assert parse_ranks(2) == (1, 2) and parse_ranks("2x1") == (2, 1) and parse_ranks(" 4X2 ") == (4, 2)
    for bad in ("two", "0x1", 0):
        with pytest.raises(UserError, match="ranks"):
            parse_ranks(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"warmup_steps": 0}, "at least 1"),
        ({"grid": {"zero": [1]}}, "axes"),
        ({"points": [{"ranks": 1}, {"ranks": 1}], "grid": {}}, "given twice"),
        ({"grid": {}, "points": []}, "no points"),
        ({"overrides": ["oops"]}, "key=value"),
        ({"extra": 1}, "unknown key"),
        ({"slurm": {"nodes": 2}}, "'slurm' takes"),
    ],
)
def test_refusals_name_the_problem(change, message):
    with pytest.raises(UserError, match=message):
        parse_sweep({**SWEEP, **change})


def test_point_overrides_derive_the_batch_and_the_steps(tmp_path):
    sweep = parse_sweep(SWEEP)
    spec = sweep.points[-1]
    overrides = point_overrides(sweep, spec, tmp_path / "run")
    cfg = load_config("configs/quickstart.yaml", overrides)
    assert cfg.training.batch_size == 4  # 1 × 2 accumulation × 2 ranks
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.gradient_accumulation) == (0, 2)
    assert (cfg.training.precision, cfg.deepspeed.activation_checkpointing) == ("bf16", True)
    assert (cfg.training.max_steps, cfg.training.val_every) == (7, 7)  # validation only after the timed steps
    assert not cfg.training.resume and cfg.run.dir == str(tmp_path / "run")


def test_config_hash_ignores_the_run_directory_only():
    a = load_config(None, ["run.dir=/a"])
    assert config_hash(a) == config_hash(load_config(None, ["run.dir=/b"]))
    assert config_hash(a) != config_hash(load_config(None, ["run.dir=/a", "deepspeed.zero_stage=1"]))


RESULT = {
    "ranks": [
        {"rank": r, "host": "h", "wall_s": 2.0 + r, "step_s": 0.4, "comm_calls": 7, "peak_memory_mib": 100.0 + r}
        | {f"{k}_s": 0.1 * (r + 1) for k in ("data", "forward", "backward", "optimizer", "comm", "other")}
        | {"parameters_bytes": 40 - 10 * r, "gradients_bytes": 20, "optimizer_bytes": 30}
        for r in range(2)
    ],
    "first_losses": [0.5, 0.25],
    "engine": "deepspeed",
    "trainable_parameters": 10,
    "versions": {"torch": "2", "deepspeed": "0.19"},
}


def test_ok_row_takes_throughput_from_rank_zero_and_the_split_over_ranks(tmp_path):
    sweep = parse_sweep(SWEEP)
    spec = PointSpec(1, 2, 3, 2, 1, "fp32", False)
    row = results.ok_row(spec, sweep, "local", RESULT, config_hash="abc")
    assert row["samples_per_s"] == 4 * 5 / 2.0  # global batch × timed steps / rank 0's timed wall
    assert row["forward_s"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert row["peak_memory_mib"] == 101.0 and row["peak_memory_per_rank_mib"] == "100.0;101.0"
    assert row["parameters_bytes"] == 40 and row["first_losses"] == "0.5;0.25"
    results.append_row(tmp_path, row)
    results.append_row(tmp_path, results.failed_row(spec, sweep, "local", "boom\n  second line"))
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[1]["error"] == "boom second line"
    assert results.recorded(tmp_path) == {spec.name: "failed"}  # a name's last row


def test_a_results_file_of_other_columns_is_refused(tmp_path):
    (tmp_path / "results.csv").write_text("world_size,zero_stage\n1,0\n")
    with pytest.raises(UserError, match="other columns"):
        results.append_row(tmp_path, {"name": "x"})


def test_error_from_log_prefers_met2net_lines():
    log = "Traceback (most recent call last):\n  ...\nValueError: inner\nmet2net: error: the split is short\nmore\n"
    assert results.error_from_log(log) == "met2net: error: the split is short"
    assert results.error_from_log("x\nTraceback\nRuntimeError: bad thing\ntorchrun noise") == "RuntimeError: bad thing"
    assert results.error_from_log("") == "no output"
