"""slurm/*.sbatch, slurm/pipeline.sh, `met2net submit` and its Python API on the real local cluster: 2 tasks (srun)
per job, DeepSpeed ZeRO-2 over gloo, checkpoints, requeue (scontrol requeue, time limit, submitit) and dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.slurm import cluster
from tests.slurm.cluster import REPO, job_field, job_state, sbatch, scontrol_show_job, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

CONFIG = "configs/quickstart.yaml"
SMALL = (
    "model.in_frames=2 model.out_frames=2 model.hid_s=4 model.hid_t=16 model.grid=[16,32] "
    "model.num_translator_blocks=1 training.batch_size=4 training.val_batches=2 training.log_every=1 "
    "data.train_years=[2010] data.val_years=[2011] data.test_years=[] data.step_hours=24 data.source=synthetic "
    "training.progress=false deepspeed.zero_stage=2"
)
TWO_TASKS = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records(run) if r["split"] == "train"]


def weights(run: Path, stage: str, step: int) -> dict[str, torch.Tensor]:
    return torch.load(run / f"checkpoints/{stage}/step_{step}/model.pt", weights_only=True)


def submit_stage(stage: str, run: Path, env: dict, overrides: str, *flags: str) -> int:
    env = {"CONFIG": CONFIG, **env, "RUN_DIR": str(run), "OVERRIDES": f"{SMALL} {overrides}"}
    return sbatch(
        [
            *TWO_TASKS,
            "--time=5",
            "--signal=B:USR1@30",
            f"--output={run.parent}/{run.name}-%j.out",
            *flags,
            f"slurm/{stage}.sbatch",
        ],
        env=env,
        cwd=REPO,
    )


def log_of(run: Path, job: int) -> str:
    path = run.parent / f"{run.name}-{job}.out"
    return path.read_text() if path.exists() else f"(no log {path})"


def wait_for_step(run: Path, step: int, job: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and any(s >= step for s, _ in losses(run)):
            return
        assert job_state(job) not in ("COMPLETED", "FAILED", "CANCELLED"), log_of(run, job)
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached:\n{scontrol_show_job(job)}\n{log_of(run, job)}")


def test_stage1_sbatch_trains_on_two_tasks(tmp_path, job_env):
    run = tmp_path / "run"
    job = submit_stage("stage1", run, job_env, "training.max_steps=4 training.val_every=2")
    assert wait_for_job(job, 180) == "COMPLETED", log_of(run, job)
    start = next(r for r in records(run) if r["split"] == "start")
    assert start["world_size"] == 2 and start["engine"] == "deepspeed"
    assert (run / "checkpoints/stage1/step_4/COMPLETE").exists()
    assert (run / "checkpoints/stage1/latest").read_text() == "step_4"
    assert "stage1: 4 steps on 2 rank(s)" in log_of(run, job)


def test_two_nodes_train_like_one(tmp_path, job_env):
    """2 nodes × 1 task (two slurmd on this host; the rendezvous is the first node's name) against 1 node × 2
    tasks: same rank layout for DeepSpeed, so the same losses and weights, bitwise."""
    if cluster.node_count() < 2:
        pytest.skip("the Slurm cluster has one node (tools/local_slurm: MET2NET_SLURM_NODES=2)")
    runs = {layout: tmp_path / layout for layout in ("one_node", "two_nodes")}
    overrides = "training.max_steps=3 training.val_every=0"
    one = submit_stage("stage1", runs["one_node"], job_env, overrides, "--nodes=1")
    two = submit_stage("stage1", runs["two_nodes"], job_env, overrides, "--nodes=2", "--ntasks-per-node=1")
    for job, run in ((one, runs["one_node"]), (two, runs["two_nodes"])):
        assert wait_for_job(job, 180) == "COMPLETED", log_of(run, job)
    assert job_field(two, "NNodes") == "2", scontrol_show_job(two)
    starts = {k: next(r for r in records(run) if r["split"] == "start") for k, run in runs.items()}
    assert (starts["two_nodes"]["num_nodes"], starts["one_node"]["num_nodes"]) == (2, 1)
    assert starts["two_nodes"]["launcher"] == "slurm" and starts["two_nodes"]["world_size"] == 2
    assert starts["two_nodes"]["master_addr"] == job_field(two, "NodeList").split(",")[0]
    assert losses(runs["two_nodes"]) == losses(runs["one_node"]) and len(losses(runs["one_node"])) == 3
    a, b = (weights(run, "stage1", 3) for run in runs.values())
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_pipeline_runs_stage_two_after_stage_one_from_its_weights(tmp_path, job_env):
    run = tmp_path / "run"
    env = {
        **job_env,
        "CONFIG": CONFIG,
        "RUN_DIR": str(run),
        "OVERRIDES": f"{SMALL} training.max_steps=3",
        "ROUNDS": "1",
    }
    out = subprocess.run(
        ["bash", "slurm/pipeline.sh", *TWO_TASKS, "--time=5", "--signal=B:USR1@30"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    ids = [int(line.split("job ")[1].split()[0]) for line in out.stdout.splitlines() if line.startswith("submitted")]
    assert len(ids) == 2 and "met2net status" in out.stdout
    assert wait_for_job(ids[1], 240) == "COMPLETED", "\n".join(f.read_text() for f in (run / "logs").glob("*"))
    assert job_state(ids[0]) == "COMPLETED"
    assert job_field(ids[1], "Start") >= job_field(ids[0], "End")  # ISO timestamps sort as text
    one, two = weights(run, "stage1", 3), weights(run, "stage2", 3)
    coders = [k for k in one if k.startswith(("encoders_q", "decoders_q"))]
    assert coders and all(torch.equal(one[k], two[k]) for k in coders)  # loaded from stage one, then frozen
    copies = [k.replace("_q.", "_k.", 1) for k in coders]  # which start as stage one's last trained codecs
    assert all(torch.equal(one[k.replace("_k.", "_q.", 1)], two[k]) for k in copies)
    assert any(not torch.equal(one[k], two[k]) for k in one if k.startswith("translator_q"))
    status = subprocess.run(
        [sys.executable, "-m", "met2net.cli", "status", str(run)], capture_output=True, text=True, timeout=60, cwd=REPO
    ).stdout
    assert status.count("COMPLETED") == 2 and "checkpoints/stage2: latest step_3" in status


def test_failed_stage_one_cancels_stage_two(tmp_path, job_env):
    """A stage that fails in its job (here: a checkpoint to start from that does not exist; a bad config key is
    refused before anything is queued, test_launch) cancels the stages after it."""
    run = tmp_path / "run"
    missing = tmp_path / "no_such_checkpoint"
    overrides = f"{SMALL} training.init_from={missing}"
    env = {**job_env, "CONFIG": CONFIG, "RUN_DIR": str(run), "OVERRIDES": overrides, "ROUNDS": "1"}
    out = subprocess.run(
        ["bash", "slurm/pipeline.sh", *TWO_TASKS, "--time=5", "--signal=B:USR1@30"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ids = [int(line.split("job ")[1].split()[0]) for line in out.stdout.splitlines() if line.startswith("submitted")]
    assert wait_for_job(ids[0], 120) == "FAILED"
    assert wait_for_job(ids[1], 60) == "CANCELLED"
    assert not (run / "checkpoints").exists()
    log = (run / "logs" / f"met2net-stage1-{ids[0]}.out").read_text()
    assert f"{missing}: no such checkpoint" in log
    status = subprocess.run(
        [sys.executable, "-m", "met2net.cli", "status", str(run)], capture_output=True, text=True, timeout=60, cwd=REPO
    ).stdout
    assert "FAILED" in status and "CANCELLED" in status and f"met2net-stage1-{ids[0]}.out" in status


LONG = "training.max_steps=40 training.checkpoint_every=5 training.val_every=0 model.drop_path=0.1"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, slurm_cluster) -> Path:
    """The run the requeued ones must reproduce bitwise: same job shape, never stopped."""
    run = tmp_path_factory.mktemp("whole") / "run"
    job = submit_stage("stage1", run, cluster.job_env(), LONG)
    assert wait_for_job(job, 300) == "COMPLETED", log_of(run, job)
    return run


def test_scontrol_requeue_resumes_to_the_same_weights(tmp_path, job_env, uninterrupted):
    run = tmp_path / "run"
    job = submit_stage("stage1", run, job_env, LONG)
    wait_for_step(run, 8, job)
    subprocess.run(["scontrol", "requeue", str(job)], check=True, capture_output=True, timeout=30)
    assert wait_for_job(job, 300) == "COMPLETED", log_of(run, job)
    log = records(run)
    assert any(r["split"] == "resume" for r in log), log_of(run, job)
    assert [s for s, _ in losses(run)][-1] == 40
    resumed = {s: v for s, v in losses(run)}
    assert resumed == dict(losses(uninterrupted))  # the steps redone after the resume gave the same losses
    a, b = weights(run, "stage1", 40), weights(uninterrupted, "stage1", 40)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stopped_records(run: Path) -> list[dict]:
    return [r for r in records(run) if r["split"] == "preempted"] if (run / "metrics.jsonl").exists() else []


def test_time_limit_signal_checkpoints_requeues_and_finishes(tmp_path, job_env):
    """`--time=1` with the warning 55 s before: Slurm (checking every ~30 s) signals the batch shell within the
    first ~35 s, the script forwards it, training checkpoints and exits 75, the script requeues the job, and the
    next run resumes and finishes. Nothing here depends on how fast the machine trains: the first run's config asks
    for more steps than any machine does before the warning (it can only end by the signal); once its stop is
    logged, the test sets the config's steps to 5 past the stop and gives the job 10 minutes, so the requeued run
    ends by finishing, never by a second warning. On 2 nodes × 1 task where there are 2 nodes: srun carries the
    warning to the task on the other node."""
    run, config = tmp_path / "run", tmp_path / "config.yaml"
    settings = yaml.safe_load((REPO / CONFIG).read_text())
    settings["training"]["max_steps"] = 10**9
    config.write_text(yaml.safe_dump(settings))
    nodes = min(2, cluster.node_count())
    job = submit_stage(
        "stage1",
        run,
        {**job_env, "CONFIG": str(config)},
        "training.checkpoint_every=0 training.val_every=0 training.log_every=1",
        "--time=1",
        "--signal=B:USR1@55",
        f"--nodes={nodes}",
        f"--ntasks-per-node={2 // nodes}",
    )
    deadline = time.monotonic() + 180  # the warning comes within ~35 s of the start, whatever the load
    while not (stops := stopped_records(run)):
        assert job_state(job) not in ("COMPLETED", "FAILED", "CANCELLED"), log_of(run, job)
        assert time.monotonic() < deadline, f"no stop logged:\n{scontrol_show_job(job)}\n{log_of(run, job)}"
        time.sleep(0.2)
    stopped = int(stops[0]["step"])
    settings["training"]["max_steps"] = stopped + 5
    config.write_text(yaml.safe_dump(settings))  # read by the requeued run only: this one read it at its start
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True, capture_output=True, timeout=30)
    assert wait_for_job(job, 300) == "COMPLETED", log_of(run, job)
    log = log_of(run, job)
    assert log.count("time-limit warning") == 1 and log.count("requeueing job") == 1, log
    stops = [r for r in records(run) if r["split"] == "preempted"]
    resumes = [r for r in records(run) if r["split"] == "resume"]
    assert [r["reason"] for r in stops] == ["signal"]
    assert [r["from"] for r in resumes] == [stops[0]["checkpoint"]] == [str(run / f"checkpoints/stage1/step_{stopped}")]
    assert [s for s, _ in losses(run)][-1] == stopped + 5
    assert (run / f"checkpoints/stage1/step_{stopped + 5}/COMPLETE").exists()
    assert {r["num_nodes"] for r in records(run) if r["split"] == "start"} == {nodes}
    assert job_field(job, "Restarts") == "1", scontrol_show_job(job)


def test_submit_pipeline_with_one_requeue(tmp_path, job_env):
    """`met2net submit` on Slurm, 2 nodes × 1 task (where there are 2): stage one gets submitit's time-limit signal
    (SIGUSR2, sent now rather than waited for), checkpoints through the training code, is requeued by submitit and
    resumes; stage two waits."""
    run = tmp_path / "run"
    env = {**job_env, "PYTHONPATH": str(REPO)}
    nodes = min(2, cluster.node_count())
    cmd = [
        sys.executable,
        "-m",
        "met2net.cli",
        "submit",
        CONFIG,
        *SMALL.split(),
        "training.max_steps=30",
        "training.checkpoint_every=5",
        "training.val_every=0",
        f"run.dir={run}",
        "--nodes",
        str(nodes),
        "--tasks-per-node",
        str(2 // nodes),
        "--time",
        "5",
        "--signal-delay",
        "30",
        "--partition",
        "debug",
        "--rounds",
        "1",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "met2net job plan: 2 job(s)" in out.stdout and f"met2net status {run}" in out.stdout
    ids = [int(line.split("job ")[1].split(",")[0]) for line in out.stdout.splitlines() if "submitted" in line]
    wait_for_step(run, 6, ids[0])
    subprocess.run(["scancel", "--signal=USR2", str(ids[0])], check=True, capture_output=True, timeout=30)
    assert wait_for_job(ids[1], 400) == "COMPLETED", "\n".join(f.read_text() for f in (run / "submitit").glob("*.out"))
    assert job_state(ids[0]) == "COMPLETED"
    log = (run / "submitit" / f"{ids[0]}_0_log.out").read_text()
    assert "Requeued job" in log and "requeue me" in log, log[-3000:]
    assert any(r["split"] == "resume" and r["schedule"] == "stage1" for r in records(run))
    assert {r["num_nodes"] for r in records(run) if r["split"] == "start"} == {nodes}
    assert [s for s, _ in losses(run) if s][-1] == 30
    assert (run / "checkpoints/stage2/step_30/COMPLETE").exists()


def test_python_api_runs_stage_two_after_stage_one(tmp_path, monkeypatch):
    """`met2net.launch.submit_pipeline` called in this process (as from a notebook): the returned jobs' `result()`
    waits for them; stage two started after stage one ended and wrote its COMPLETE checkpoint."""
    from met2net.launch import submit_pipeline

    for key, value in cluster.job_env(PYTHONPATH=str(REPO)).items():  # what sbatch passes on to the jobs
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    lines: list[str] = []
    jobs = submit_pipeline(
        CONFIG,
        [*SMALL.split(), "training.max_steps=3", "training.val_every=0", f"run.dir={run}"],
        rounds=1,
        tasks_per_node=2,
        time=5,
        signal_delay_s=30,
        echo=lines.append,
    )
    assert [job.name for job in jobs] == ["met2net-stage1", "met2net-stage2"] and "met2net job plan" in lines[0]
    try:
        results = [job.result() for job in jobs]
    except Exception as error:  # submitit's error holds the failed task's traceback; the logs say the rest
        pytest.fail(f"{error}\n" + "\n".join(f.read_text() for f in sorted((run / "submitit").glob("*.out"))))
    assert results == [run, run]
    ids = [int(job.job_id) for job in jobs]
    for job_id in ids:
        assert wait_for_job(job_id, 60) == "COMPLETED"
    assert [job.state for job in jobs] == ["COMPLETED", "COMPLETED"]
    assert job_field(ids[1], "Start") >= job_field(ids[0], "End")  # ISO timestamps sort as text
    assert all((run / f"checkpoints/{stage}/step_3/COMPLETE").exists() for stage in ("stage1", "stage2"))
    assert {r["schedule"]: r["world_size"] for r in records(run) if r["split"] == "start"} == {"stage1": 2, "stage2": 2}
    assert [line.split("\t")[0] for line in (run / "jobs.tsv").read_text().splitlines()[1:]] == [str(i) for i in ids]
