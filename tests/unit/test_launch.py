"""Job plans, records, status and the rendered batch scripts (golden files), without a cluster.

The same scripts run on the real local Slurm cluster in tests/slurm/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from met2net.launch import plan
from met2net.launch.jobs import JobRecord, append_records, read_records
from met2net.launch.status import status
from met2net.launch.submit import render_sbatch

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests/assets/golden"
REGENERATE = os.environ.get("MET2NET_REGENERATE_GOLDEN") == "1"  # after an intended change; review the diff


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGENERATE:
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; if intended, rerun with MET2NET_REGENERATE_GOLDEN=1"


def test_plan_chains_stages_and_rounds():
    jobs = plan.make_plan("/r", ("stage1", "stage2"), rounds=2, overrides=("training.lr=1e-3",))
    assert [(j.name, j.after, j.run_dir) for j in jobs] == [
        ("met2net-stage1-r1", None, "/r/round_1"), ("met2net-stage2-r1", 0, "/r/round_1"),
        ("met2net-stage1-r2", 1, "/r/round_2"), ("met2net-stage2-r2", 2, "/r/round_2")]
    assert jobs[0].overrides == ("training.lr=1e-3", "training.schedule=stage1", "run.dir=/r/round_1")
    assert "training.init_from=/r/round_1/checkpoints/stage2" in jobs[2].overrides
    assert "training.init_from=" in jobs[1].overrides  # this round's stage one, whatever the user's source
    assert jobs[-1].overrides[-1] == "run.dir=/r/round_2"
    single = plan.make_plan("/r", ("implicit",))
    assert [(j.schedule, j.run_dir, j.after) for j in single] == [("implicit", "/r", None)]


@pytest.mark.parametrize("text, message", [("stage3", "expected a comma-separated"), ("stage2,stage1", "comes first"),
                                           ("stage1,stage1", "twice"), ("", "expected")])
def test_bad_stages_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        plan.parse_stages(text)


def test_bad_rounds_and_resources_are_named():
    with pytest.raises(ValueError, match="--rounds 2"):
        plan.make_plan("/r", ("implicit",), rounds=2)
    with pytest.raises(ValueError, match="--signal-delay 600 s must be shorter than --time 5 min"):
        plan.Resources(time_min=5, signal_delay_s=600)
    with pytest.raises(ValueError, match="--nodes must be at least 1"):
        plan.Resources(nodes=0)


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30:00", 90), ("0:01:30", 2), ("2-00:00:00", 2880),
                                           ("45:00", 45)])
def test_parse_minutes(text, minutes):
    assert plan.parse_minutes(text) == minutes


def test_parse_minutes_names_bad_value():
    with pytest.raises(ValueError, match="--time 'soon'"):
        plan.parse_minutes("soon")


def test_plan_text_golden():
    jobs = plan.make_plan("/scratch/mv5", ("stage1", "stage2"), rounds=2, overrides=("training.lr=1e-3",))
    res = plan.Resources(nodes=4, tasks_per_node=4, gpus_per_node=4, cpus_per_task=8, time_min=720,
                         partition="gpu", account="weather")
    check_golden("plan_4x4.txt", plan.format_plan(jobs, res, "configs/mv5_5.625.yaml", "slurm") + "\n")


def test_submitit_sbatch_golden(tmp_path):
    """What submitit hands to sbatch for stage two of a 4 nodes × 4 GPUs plan: dependency, requeue, signal."""
    jobs = plan.make_plan("/scratch/mv5", ("stage1", "stage2"))
    res = plan.Resources(nodes=4, tasks_per_node=4, gpus_per_node=4, cpus_per_task=8, time_min=720,
                         partition="gpu", account="weather")
    text = render_sbatch(jobs[1], res, Path("/scratch/mv5/submitit"), after_id="1234")
    check_golden("submitit_stage2.sbatch", text.replace(sys.executable, "<python>"))


def test_pipeline_dry_run_golden():
    env = {**os.environ, "DRY_RUN": "1", "ROUNDS": "2", "RUN_DIR": "runs/mv5", "CONFIG": "configs/mv5_5.625.yaml",
           "OVERRIDES": "training.lr=1e-3"}
    out = subprocess.run(["bash", "slurm/pipeline.sh", "--partition=gpu", "--nodes=4"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    check_golden("pipeline_dry_run.txt", out.replace(str(ROOT), "<repo>"))
    assert not (ROOT / "runs/mv5/jobs.tsv").exists()  # a dry run writes nothing


def test_pipeline_refuses_bad_input():
    for env, message in (({"ROUNDS": "0"}, "ROUNDS=0 must be a positive integer"),
                         ({"CONFIG": "nope.yaml"}, "CONFIG=nope.yaml does not exist")):
        out = subprocess.run(["bash", "slurm/pipeline.sh"], cwd=ROOT, env={**os.environ, "DRY_RUN": "1", **env},
                             capture_output=True, text=True)
        assert out.returncode == 2 and message in out.stderr


def test_sbatch_scripts_differ_only_in_stage():
    one, two = ((ROOT / f"slurm/stage{i}.sbatch").read_text().splitlines() for i in (1, 2))
    directives = [line for line in one if line.startswith("#SBATCH")]
    assert "#SBATCH --requeue" in directives and "#SBATCH --open-mode=append" in directives
    assert any(line.startswith("#SBATCH --signal=B:USR1@") for line in directives)
    assert [line.replace("stage1", "stage2") for line in one if not line.startswith("# ")] == \
        [line for line in two if not line.startswith("# ")]
    assert sum(line.startswith("srun ") for line in one) == 1


def test_records_round_trip_and_status(tmp_path):
    records = [JobRecord("17", "slurm", "met2net-stage1", "stage1", 1, str(tmp_path), "/logs/a.out"),
               JobRecord("4242", "local", "met2net-stage2", "stage2", 1, str(tmp_path), "/logs/b.out")]
    append_records(tmp_path, records[:1])
    append_records(tmp_path, records[1:])
    assert read_records(tmp_path) == records
    stage = tmp_path / "checkpoints/stage1"
    for step in (5, 10):
        (stage / f"step_{step}").mkdir(parents=True)
        (stage / f"step_{step}/meta.json").write_text(json.dumps({"val": {"loss": 0.5 / step}, "world_size": 2}))
        (stage / f"step_{step}/COMPLETE").write_text("")
    (stage / ".step_15.partial").mkdir()
    (stage / "latest").write_text("step_10")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 10, "schedule": "stage1",
                                                        "time": 0, "loss": 0.25}) + "\n")
    text = status(tmp_path)
    assert "latest step_10 (validation loss 0.05000), 2 kept, 2 rank(s)" in text
    assert "last train: stage1 step 10: loss 0.25" in text
    assert "met2net-stage2" in text and "/logs/b.out" in text


def test_status_names_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        status(tmp_path / "nope")


def test_bad_records_file_is_named(tmp_path):
    (tmp_path / "jobs.tsv").write_text("job_id\texecutor\n1\tslurm\n")
    with pytest.raises(ValueError, match=r"jobs.tsv:2: expected 7 tab-separated columns"):
        read_records(tmp_path)
