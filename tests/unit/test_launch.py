"""Job plans, records, status and the rendered batch scripts (golden files), without a cluster.

The same scripts run on the real local Slurm cluster in tests/slurm/.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from met2net import cli
from met2net.config import SCHEDULES, load_config
from met2net.launch import JobFailed, plan, plan_pipeline, submit_pipeline
from met2net.launch import submit as submit_module
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
        ("met2net-stage1-r1", None, "/r/round_1"),
        ("met2net-stage2-r1", 0, "/r/round_1"),
        ("met2net-stage1-r2", 1, "/r/round_2"),
        ("met2net-stage2-r2", 2, "/r/round_2"),
    ]
    assert jobs[0].overrides == ("training.lr=1e-3", "training.schedule=stage1", "run.dir=/r/round_1")
    assert "training.init_from=/r/round_1/checkpoints/stage2" in jobs[2].overrides
    assert "training.init_from=" in jobs[1].overrides  # this round's stage one, whatever the user's source
    assert jobs[-1].overrides[-1] == "run.dir=/r/round_2"
    single = plan.make_plan("/r", ("implicit",))
    assert [(j.schedule, j.run_dir, j.after) for j in single] == [("implicit", "/r", None)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("stage3", "expected a comma-separated"),
        ("stage2,stage1", "comes first"),
        ("stage1,stage1", "twice"),
        ("", "expected"),
    ],
)
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


@pytest.mark.parametrize(
    "text, minutes", [("90", 90), ("1:30:00", 90), ("0:01:30", 2), ("2-00:00:00", 2880), ("45:00", 45)]
)
def test_parse_minutes(text, minutes):
    assert plan.parse_minutes(text) == minutes


def test_parse_minutes_names_bad_value():
    with pytest.raises(ValueError, match="--time 'soon'"):
        plan.parse_minutes("soon")


GOLDEN_SUFFIX = {"node": "", "task": "_task"}  # the node layout's files predate the task layout


@pytest.mark.parametrize("layout", ["node", "task"])
def test_plan_text_golden(layout):
    """The plan states the GPU layout it will request (docs/cluster.md, GPU layouts)."""
    jobs = plan.make_plan("/scratch/mv5", ("stage1", "stage2"), rounds=2, overrides=("training.lr=1e-3",))
    res = plan.Resources(
        nodes=4,
        tasks_per_node=4,
        gpus_per_node=4,
        cpus_per_task=8,
        time_min=720,
        partition="gpu",
        account="weather",
        gpu_layout=layout,
    )
    text = plan.format_plan(jobs, res, "configs/mv5_5.625.yaml", "slurm") + "\n"
    check_golden(f"plan_4x4{GOLDEN_SUFFIX[layout]}.txt", text)


@pytest.mark.parametrize("layout", ["node", "task"])
def test_submitit_sbatch_golden(tmp_path, layout):
    """What submitit hands to sbatch for stage two of a 4 nodes × 4 GPUs plan: dependency, requeue, signal; in the
    task layout srun binds one GPU to each task."""
    jobs = plan.make_plan("/scratch/mv5", ("stage1", "stage2"), rounds=1)
    res = plan.Resources(
        nodes=4,
        tasks_per_node=4,
        gpus_per_node=4,
        cpus_per_task=8,
        time_min=720,
        partition="gpu",
        account="weather",
        gpu_layout=layout,
    )
    text = render_sbatch(jobs[1], res, Path("/scratch/mv5/submitit"), after_id="1234")
    check_golden(f"submitit_stage2{GOLDEN_SUFFIX[layout]}.sbatch", text.replace(sys.executable, "<python>"))
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert ("--gpu-bind=single:1" in srun) == (layout == "task")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(gpu_layout="socket"), "--gpu-layout 'socket': expected one of node, task"),
        (dict(gpu_layout="task", gpus_per_node=0), "--gpu-layout task binds one GPU to each task"),
        (dict(gpus_per_node=8), "--gpus-per-node 8 with --tasks-per-node 4"),
    ],
)
def test_gpu_resources_that_cannot_work_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        plan.Resources(**{"tasks_per_node": 4, "gpus_per_node": 4, **change})
    plan.Resources(tasks_per_node=1, gpus_per_node=8)  # a lone rank per node may see several (it uses cuda:0)


PIPELINE_ENV = {**os.environ, "MET2NET_PYTHON": sys.executable}  # pipeline.sh runs the plan with this Python


@pytest.mark.parametrize("layout", ["", "task"])
def test_pipeline_dry_run_golden(layout):
    """GPU_LAYOUT, when set, is passed to the jobs (slurm/job.sh reads it) and shown in the dry run."""
    env = {
        **PIPELINE_ENV,
        "DRY_RUN": "1",
        "ROUNDS": "2",
        "RUN_DIR": "runs/mv5",
        "CONFIG": "configs/mv5_5.625.yaml",
        "OVERRIDES": "training.lr=1e-3",
        "GPU_LAYOUT": layout,
    }
    out = subprocess.run(
        ["bash", "slurm/pipeline.sh", "--partition=gpu", "--nodes=4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    check_golden(f"pipeline_dry_run{'_task' if layout else ''}.txt", out.replace(str(ROOT), "<repo>"))
    assert not (ROOT / "runs/mv5/jobs.tsv").exists()  # a dry run writes nothing


def test_pipeline_refuses_bad_input():
    for env, message in (
        ({"ROUNDS": "0"}, "ROUNDS=0 must be a positive integer"),
        ({"CONFIG": "nope.yaml"}, "CONFIG=nope.yaml does not exist"),
        ({"GPU_LAYOUT": "socket"}, "GPU_LAYOUT=socket: expected node or task"),
        # the config and OVERRIDES are checked before anything is queued, as `met2net submit` does
        ({"OVERRIDES": "training.max_stpes=3"}, "unknown key 'training.max_stpes'; did you mean 'training.max_steps'"),
        ({"OVERRIDES": "training.rounds=0"}, "'training.rounds' must be ≥ 1 round"),
    ):
        out = subprocess.run(
            ["bash", "slurm/pipeline.sh"],
            cwd=ROOT,
            env={**PIPELINE_ENV, "DRY_RUN": "1", **env},
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2 and message in out.stderr


def test_sbatch_scripts_differ_only_in_stage():
    """Both are #SBATCH headers, SCHEDULE and the one shared job body (slurm/job.sh), found where sbatch's copy of
    the script can see it; they differ in their description, name and SCHEDULE only."""
    one, two = ((ROOT / f"slurm/stage{i}.sbatch").read_text().splitlines() for i in (1, 2))
    body = (ROOT / "slurm/job.sh").read_text().splitlines()
    directives = [line for line in one if line.startswith("#SBATCH")]
    assert "#SBATCH --requeue" in directives and "#SBATCH --open-mode=append" in directives
    assert any(line.startswith("#SBATCH --signal=B:USR1@") for line in directives)
    assert [line.replace("stage1", "stage2") for line in one if not line.startswith("# ")] == [
        line for line in two if not line.startswith("# ")
    ]
    for script, stage in ((one, "stage1"), (two, "stage2")):
        code = [line for line in script if line.strip() and not line.startswith("#")]
        assert code[0] == f"SCHEDULE={stage}"
        assert code[1].startswith('. "${MET2NET_SLURM_DIR:-$SLURM_SUBMIT_DIR/slurm}/job.sh"')
        assert not any(line.startswith("srun ") for line in script)
    assert sum(line.startswith("srun ") for line in body) == 1
    srun = next(line for line in body if line.startswith("srun "))
    assert 'training.schedule="$SCHEDULE" run.dir="$RUN_DIR"' in srun and "scontrol requeue" in "\n".join(body)


def test_job_body_passes_overrides_as_words_without_expanding_them(tmp_path):
    """slurm/job.sh with srun replaced by a stub: OVERRIDES is split on blanks, nothing in it is expanded or
    globbed, and the schedule and run directory come from SCHEDULE and RUN_DIR."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "model.grid=1").write_text("")  # what an unquoted model.grid=[16,32] would glob to
    overrides = "model.grid=[16,32]  a=$(touch pwned) b=*\n c='d'"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ARGS_OUT": str(tmp_path / "args"),
        "SCHEDULE": "stage2",
        "CONFIG": "c.yaml",
        "RUN_DIR": "runs/a b",
        "OVERRIDES": overrides,
    }
    out = subprocess.run(["bash", str(ROOT / "slurm/job.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "args").read_text().splitlines() == [
        "--wait=60",
        "met2net",
        "train",
        "c.yaml",
        "training.schedule=stage2",
        "run.dir=runs/a b",
        "model.grid=[16,32]",
        "a=$(touch",
        "pwned)",
        "b=*",
        "c='d'",
    ]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("layout, bind", [("", []), ("node", []), ("task", ["--gpu-bind=single:1"])])
def test_job_body_binds_gpus_as_the_layout_says(tmp_path, layout, bind):
    """GPU_LAYOUT=task makes srun bind one GPU to each task, with the flag plan.GPU_BIND names for submitit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ARGS_OUT": str(tmp_path / "args"),
        "SCHEDULE": "stage1",
        "GPU_LAYOUT": layout,
    }
    out = subprocess.run(["bash", str(ROOT / "slurm/job.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = ["--wait=60", *bind, "met2net", "train"]
    assert (tmp_path / "args").read_text().splitlines()[: len(expected)] == expected
    assert bind == list(plan.GPU_BIND[layout or "node"])
    bad = subprocess.run(
        ["bash", str(ROOT / "slurm/job.sh")],
        cwd=tmp_path,
        env={**env, "GPU_LAYOUT": "socket"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "GPU_LAYOUT=socket: expected node or task" in bad.stderr


def test_records_round_trip_and_status(tmp_path):
    records = [
        JobRecord("17", "slurm", "met2net-stage1", "stage1", 1, str(tmp_path), "/logs/a.out"),
        JobRecord("4242", "local", "met2net-stage2", "stage2", 1, str(tmp_path), "/logs/b.out"),
    ]
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
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"split": "train", "step": 10, "schedule": "stage1", "time": 0, "loss": 0.25}) + "\n"
    )
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


def test_schedules_are_declared_once():
    assert plan.SCHEDULES is SCHEDULES


def test_plan_command_gives_pipeline_sh_its_plan():
    """`python -m met2net.launch.plan`: make_plan's jobs as tab-separated lines, each job's OVERRIDES without the
    schedule and run.dir (the batch script adds those); what the shell could not carry is refused."""
    cmd = [sys.executable, "-m", "met2net.launch.plan", "--run-dir=/r", "--rounds=2", "--overrides= training.lr=1e-3 "]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [line.split("\t") for line in out.splitlines()] == [
        ["met2net-stage1-r1", "stage1", "1", "/r/round_1", "-", "training.lr=1e-3"],
        ["met2net-stage2-r1", "stage2", "1", "/r/round_1", "0", "training.lr=1e-3 training.init_from="],
        [
            "met2net-stage1-r2",
            "stage1",
            "2",
            "/r/round_2",
            "1",
            "training.lr=1e-3 training.init_from=/r/round_1/checkpoints/stage2",
        ],
        ["met2net-stage2-r2", "stage2", "2", "/r/round_2", "2", "training.lr=1e-3 training.init_from="],
    ]
    jobs = plan.make_plan("/r", ("stage1", "stage2"), rounds=2, overrides=("training.lr=1e-3",))
    assert out.splitlines() == plan.shell_lines(jobs, ("training.lr=1e-3",))
    bad = subprocess.run([*cmd[:3], "--run-dir=/r a", "--rounds=2"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot be empty or contain blanks" in bad.stderr and not bad.stdout
    with pytest.raises(ValueError, match="holds a line break or another control character"):
        plan.shell_lines(plan.make_plan("/r\nx", ("stage1",)))


def test_pipeline_passes_overrides_through_intact(tmp_path):
    """Metacharacters in OVERRIDES reach sbatch's environment as they were written, expanded by nobody."""
    # words without blanks (slurm/job.sh splits OVERRIDES on them) for string keys (the plan validates the config
    # with them); a later value of a key replaces an earlier one
    overrides = (
        'run.dir=$(touch${IFS}pwned) data.path=`touch${IFS}pwned`;c run.dir="e" data.path=g[1,2] run.dir=* '
        "data.path='j'"
    )
    env = {
        **PIPELINE_ENV,
        "DRY_RUN": "1",
        "RUN_DIR": "runs/x",
        "CONFIG": str(ROOT / "configs/quickstart.yaml"),
        "OVERRIDES": overrides,
        "ROUNDS": "1",
    }
    out = subprocess.run(
        ["bash", str(ROOT / "slurm/pipeline.sh"), "--comment=two words"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = [shlex.split(line) for line in out.splitlines()]
    assert [c[3] for c in commands] == [f"OVERRIDES={overrides}", f"OVERRIDES={overrides} training.init_from="]
    assert all("--comment=two words" in c for c in commands)
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_a_staged_pipeline_has_the_configs_rounds_unless_told_otherwise():
    """A pipeline of stage one → stage two has the config's training.rounds (2 unless it says otherwise; the quick
    start's 4, docs/results.md), in the plan of `met2net submit` and of slurm/pipeline.sh alike; --rounds / ROUNDS
    override it; a schedule that trains everything at once has one round."""
    staged = plan.make_plan("/r", ("stage1", "stage2"))  # no config: TrainingConfig's 2
    assert [(j.schedule, j.round) for j in staged] == [("stage1", 1), ("stage2", 1), ("stage1", 2), ("stage2", 2)]
    assert "training.init_from=/r/round_1/checkpoints/stage2" in staged[2].overrides
    assert [j.round for j in plan.make_plan("/r", ("stage1", "stage2"), configured_rounds=3)] == [1, 1, 2, 2, 3, 3]
    assert [j.round for j in plan.make_plan("/r", ("end_to_end",), configured_rounds=3)] == [1]
    assert [j.round for j in plan.make_plan("/r", ("stage2",), configured_rounds=3)] == [1]
    assert len(plan.make_plan("/r", ("stage1", "stage2"), rounds=1, configured_rounds=3)) == 2

    quick = str(ROOT / "configs/quickstart.yaml")
    configured = load_config(quick).training.rounds

    def dry_run(**env: str) -> list[str]:
        out = subprocess.run(
            ["bash", "slurm/pipeline.sh"],
            cwd=ROOT,
            env={**PIPELINE_ENV, "DRY_RUN": "1", "CONFIG": quick, "RUN_DIR": "/r", **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [line.split("--job-name=")[1].split()[0] for line in out.splitlines()]

    names = [f"met2net-{stage}-r{r}" for r in range(1, configured + 1) for stage in ("stage1", "stage2")]
    assert dry_run() == names
    assert [j.name for j in plan_pipeline(quick, ["run.dir=/r"], executor="local").jobs] == names
    assert dry_run(OVERRIDES="training.rounds=1") == ["met2net-stage1", "met2net-stage2"]
    assert dry_run(ROUNDS="2", OVERRIDES="training.rounds=1") == names[:2] + ["met2net-stage1-r2", "met2net-stage2-r2"]


API_ARGS = dict(
    rounds=2,
    nodes=4,
    tasks_per_node=4,
    gpus_per_node=4,
    cpus_per_task=8,
    time="12:00:00",
    partition="gpu",
    account="weather",
)


def test_submit_pipeline_dry_run_golden():
    """The Python API checks the config and prints the plan that `met2net submit --dry-run` prints; nothing queued."""
    lines = []
    jobs = submit_pipeline(
        "configs/mv5_5.625.yaml",
        ["training.lr=1e-3", "run.dir=/scratch/mv5"],
        **API_ARGS,
        dry_run=True,
        echo=lines.append,
    )
    assert jobs == [] and lines[-1] == "dry run: nothing submitted"
    check_golden("submit_pipeline_dry_run.txt", "\n".join(lines).replace(str(ROOT), "<repo>") + "\n")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "met2net.cli",
            "submit",
            "configs/mv5_5.625.yaml",
            "training.lr=1e-3",
            "run.dir=/scratch/mv5",
            "--rounds",
            "2",
            "--nodes",
            "4",
            "--tasks-per-node",
            "4",
            "--gpus-per-node",
            "4",
            "--cpus-per-task",
            "8",
            "--time",
            "12:00:00",
            "--partition",
            "gpu",
            "--account",
            "weather",
            "--dry-run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout == "\n".join(lines) + "\n"  # `met2net submit` is a caller of the API
    assert not Path("/scratch/mv5").exists()


def test_submit_dry_run_shows_the_gpu_layout_it_requests():
    """`met2net submit --gpu-layout task --dry-run`: the plan says srun binds one GPU per task, and the batch script
    submitit would get has that srun (the golden file of test_submitit_sbatch_golden[task])."""
    args = ["configs/mv5_5.625.yaml", "run.dir=/scratch/mv5", "--nodes", "4", "--tasks-per-node", "4"]
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "met2net.cli",
            "submit",
            *args,
            "--gpus-per-node",
            "4",
            "--gpu-layout",
            "task",
            "--dry-run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "  GPU layout task: srun --gpu-bind=single:1 gives each task one of its node's 4 GPU(s)" in cli.stdout
    pipeline = plan_pipeline("configs/mv5_5.625.yaml", ["run.dir=/scratch/mv5"], **API_ARGS, gpu_layout="task")
    script = pipeline.sbatch_script(1, after_id="1234").replace(sys.executable, "<python>")
    assert script.replace("met2net-stage2-r1", "met2net-stage2") == (GOLDEN / "submitit_stage2_task.sbatch").read_text()


def test_plan_pipeline_batch_script_is_submitits():
    """What the API will hand to sbatch is what submitit renders for the same job (the golden file of
    test_submitit_sbatch_golden); without a job id the dependency names the job waited for."""
    pipeline = plan_pipeline("configs/mv5_5.625.yaml", ["run.dir=/scratch/mv5"], **{**API_ARGS, "rounds": 1})
    assert [j.name for j in pipeline.jobs] == ["met2net-stage1", "met2net-stage2"]
    assert pipeline.folder == Path("/scratch/mv5/submitit") and pipeline.resources.time_min == 720
    check_golden(
        "submitit_stage2.sbatch", pipeline.sbatch_script(1, after_id="1234").replace(sys.executable, "<python>")
    )
    assert "#SBATCH --dependency='afterok:<job id of met2net-stage1>'\n" in pipeline.sbatch_script(1)
    assert "--dependency" not in pipeline.sbatch_script(0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(executor="pbs"), "--executor 'pbs'"),
        (dict(stages=("stage2", "stage1")), "comes first"),
        (dict(stages="stage1,stage3"), "expected a comma-separated"),
        (dict(time="soon"), "--time 'soon'"),
        (dict(nodes=0), "--nodes must be at least 1"),
        (dict(rounds=0), "--rounds must be at least 1"),
        (dict(time=5, signal_delay_s=600), "--signal-delay 600 s must be shorter than --time 5 min"),
        (dict(overrides="training.lr=1e-3"), "not one string"),
        (dict(overrides=["training.max_stpes=3"]), "max_steps"),
        (dict(gpus_per_node=1, gpu_layout="task"), "--gpu-layout task needs Slurm"),
    ],
)
def test_api_refuses_bad_arguments_before_submitting(tmp_path, change, message):
    kwargs = {"overrides": [f"run.dir={tmp_path / 'run'}"], **change}
    with pytest.raises(ValueError, match=message):
        submit_pipeline(str(ROOT / "configs/quickstart.yaml"), executor=kwargs.pop("executor", "local"), **kwargs)
    assert not (tmp_path / "run").exists()


def test_failed_local_job_raises_and_the_cli_exits_1(monkeypatch, capsys, tmp_path):
    """A real local submitit job that fails (1 / 0 in place of training): the library raises JobFailed naming the job
    and its log, stage two is never started, and `met2net submit` turns it into exit code 1 with that message."""
    monkeypatch.setattr(submit_module, "TrainJob", lambda config, overrides: functools.partial(operator.truediv, 1, 0))
    with pytest.raises(
        JobFailed, match=r"met2net-stage1-r1 \(job \d+\) failed; the jobs after it were not started"
    ) as e:
        submit_pipeline(ROOT / "configs/quickstart.yaml", [f"run.dir={tmp_path / 'api'}"], executor="local", echo=None)
    assert "ZeroDivisionError" in str(e.value) and len(e.value.handles) == 1
    assert [r.name for r in read_records(tmp_path / "api")] == ["met2net-stage1-r1"]
    config = str(ROOT / "configs/quickstart.yaml")
    code = cli.main(["submit", config, f"run.dir={tmp_path / 'cli'}", "--executor", "local"])
    out = capsys.readouterr().out
    assert code == 1 and "met2net-stage1-r1 (job" in out and "failed; the jobs after it were not started" in out
    assert "ZeroDivisionError" in out and "watch with" not in out


# -- hostile values (issue 16, item 7): what reaches a shell or an sbatch script is quoted, or refused ---------------
HOSTILE = "a b$(touch pwned1)`touch pwned2`;touch pwned3 'q\"&|>x<*"


@pytest.mark.parametrize(
    "option, value",
    [
        ("--partition", "gpu\ntouch pwned"),  # after #SBATCH, a new line is a shell line of the batch script
        ("--partition", "gpu;touch pwned"),
        ("--account", "acc$(touch pwned)"),
        ("--account", "two words"),
    ],
)
def test_slurm_names_with_metacharacters_are_refused(option, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["submit", str(ROOT / "configs/quickstart.yaml"), "--dry-run", option, value, f"run.dir={tmp_path / 'r'}"]
    assert cli.main(args) == 2
    assert f"{option} {value!r}: expected a Slurm name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_dir_with_a_line_break_is_refused(tmp_path, capsys):
    """A line break reaches run.dir from a config file (YAML folds one given on the command line into a blank)."""
    config = tmp_path / "c.yaml"
    config.write_text(f'run: {{dir: {json.dumps(str(tmp_path / "r"))[:-1]}\\ntouch pwned"}}\n')
    assert cli.main(["submit", str(config), "--dry-run"]) == 2
    assert "holds a line break or another control character" in capsys.readouterr().err
    with pytest.raises(ValueError, match="folder"):
        plan_pipeline(str(ROOT / "configs/quickstart.yaml"), [f"run.dir={tmp_path}"], folder=tmp_path / "f\rx")


def test_a_hostile_run_dir_and_config_values_run_nothing(tmp_path):
    """submitit's batch script for a run directory full of shell metacharacters, run by bash with ``srun`` (and the
    interpreter it starts) replaced by a stub that records its arguments: the path arrives as one word, intact, and
    nothing in it ran. A hostile config value travels inside the pickled job, never through a shell."""
    run_dir = tmp_path / HOSTILE
    value = "data.path=$(touch pwned4);x"
    pipeline = plan_pipeline(str(ROOT / "configs/quickstart.yaml"), [value, f"run.dir={run_dir}"], rounds=1)
    script = pipeline.sbatch_script(0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "job.sh").write_text(script)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args")}
    out = subprocess.run(["bash", "job.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    folder = pipeline.folder
    assert str(folder) == f"{run_dir}/submitit"
    assert (tmp_path / "args").read_text().splitlines() == [
        "--unbuffered",
        "--output",
        f"{folder}/%j_%t_log.out",
        sys.executable,
        "-u",
        "-m",
        "submitit.core._submit",
        str(folder),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args", "bin", "job.sh"]  # no pwned*, no a b…
    assert value in pipeline.jobs[0].overrides
