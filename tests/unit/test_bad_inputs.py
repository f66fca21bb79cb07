"""The bad-input matrix (issue 16, item 3): each bad input a user can give — config, data files, shards, checkpoints,
command-line arguments, sbatch/submitit settings, the launch environment — ends the command with exit code 2 and one
line that names the file, key or value and says what to do, never a traceback, and changes nothing that was there.

Real files in a temporary directory (tiny shards, a run trained for 2 steps), real commands through ``cli.main`` in
this process. docs/troubleshooting.md ("Bad inputs") lists every case by id with its message; a case's error line must
hold the documented message ("…" stands for paths and details), and the list and the cases must name the same ids.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from met2net import cli
from met2net.data.netcdf import write_weatherbench_tree
from met2net.data.shards import ShardMeta, shard_entry, write_index, write_shard
from met2net.data.stats import Moments, write_stats

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
CHANNELS = ["u10", "t2m", "r"]
GRID = (8, 16)
CONFIG = """\
model: {{variables: [u10, t2m, r], in_frames: 2, out_frames: 2, grid: [8, 16], hid_s: 4, hid_t: 16,
        num_translator_blocks: 2, num_heads: 4}}
training: {{schedule: stage1, max_steps: 2, batch_size: 2, progress: false, val_batches: 1}}
data: {{source: shards, path: {shards}, train_years: [2010], val_years: [2011], test_years: [], step_hours: 6}}
run: {{dir: {root}/new}}
"""
LAUNCH_VARS = re.compile(r"(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|MASTER_ADDR|MASTER_PORT)$|(SLURM|OMPI|PMI)_")


def write_shards(directory: Path, years: tuple[int, ...] = (2010, 2011), frames: int = 12) -> Path:
    """``frames`` 6-hourly frames of 3 channels on an 8×16 grid per year, index.json and stats.json of 2010."""
    directory.mkdir(parents=True)
    lat, lon = np.linspace(-78.75, 78.75, GRID[0]), 22.5 * np.arange(GRID[1])
    meta = ShardMeta(CHANNELS, ["m s**-1", "K", "%"], CHANNELS, [-1, -1, 1000], lat, lon)
    rng = np.random.default_rng(0)
    entries = []
    for year in years:
        times = np.datetime64(f"{year}-01-01T00", "h") + np.arange(frames) * np.timedelta64(6, "h")
        path = directory / f"{year}.h5"
        fields = rng.standard_normal((frames, len(CHANNELS), *GRID)).astype(np.float32)
        entries.append(shard_entry(path, times, write_shard(path, times, fields, meta)))
    write_index(directory, meta, 6, entries)
    write_stats(directory, Moments.of(rng.standard_normal((4, len(CHANNELS), *GRID)), 1), CHANNELS, [years[0]])
    return directory


def run_cli(argv: list[str]) -> int:
    """``met2net ARGV`` in this process: its exit code (argparse's errors exit 2 through SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def paths(root: Path) -> dict[str, Path]:
    """The names a case's text may use: ``{root}``, ``{cfg}`` (a good config), ``{shards}``, ``{run}`` (a run trained
    2 steps of stage1), ``{stage}`` and ``{ckpt}`` (its checkpoint step_2)."""
    stage = root / "run" / "checkpoints" / "stage1"
    return dict(
        root=root, cfg=root / "c.yaml", shards=root / "shards", run=root / "run", stage=stage, ckpt=stage / "step_2"
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    p = paths(root)
    write_shards(p["shards"])
    p["cfg"].write_text(CONFIG.format(**p))
    assert run_cli(["train", str(p["cfg"]), f"run.dir={p['run']}"]) == 0
    assert (p["ckpt"] / "COMPLETE").is_file()
    return root


# -- what a case does to the good files -------------------------------------------------------------------------------
def write(name: str, text: str | bytes) -> Callable[[dict[str, Path]], None]:
    def setup(p: dict[str, Path]) -> None:
        path = Path(name.format(**p))
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)

    return setup


def edit_json(name: str, change: Callable[[dict], None]) -> Callable[[dict[str, Path]], None]:
    def setup(p: dict[str, Path]) -> None:
        path = Path(name.format(**p))
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))

    return setup


def truncate(name: str) -> Callable[[dict[str, Path]], None]:
    def setup(p: dict[str, Path]) -> None:
        path = Path(name.format(**p))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def flip_bit(name: str) -> Callable[[dict[str, Path]], None]:
    def setup(p: dict[str, Path]) -> None:
        path = Path(name.format(**p))
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))

    return setup


def remove(name: str) -> Callable[[dict[str, Path]], None]:
    return lambda p: Path(name.format(**p)).unlink()


class Payload:
    """Unpickled, it would run a shell command: what a hostile checkpoint file holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def hostile(name: str) -> Callable[[dict[str, Path]], None]:
    """``{ckpt}/NAME`` replaced by a pickle that would run ``touch {root}/pwned``, and the checkpoint's checksums
    made to match it (anyone who can write a checkpoint can recompute them: they catch damage, not intent)."""

    def setup(p: dict[str, Path]) -> None:
        torch.save({"state": Payload(f"touch {p['root']}/pwned")}, p["ckpt"] / name)
        meta = json.loads((p["ckpt"] / "meta.json").read_text())
        meta["files"][name] = hashlib.sha256((p["ckpt"] / name).read_bytes()).hexdigest()
        text = json.dumps(meta, indent=2)
        (p["ckpt"] / "meta.json").write_text(text)
        (p["ckpt"] / "COMPLETE").write_text(hashlib.sha256(text.encode()).hexdigest())

    return setup


def nan_in_shard(p: dict[str, Path]) -> None:
    with h5py.File(p["shards"] / "2010.h5", "r+") as f:
        f["fields"][3, 1, 2, 2] = np.nan


def held_by_another(p: dict[str, Path], lock: Path, holder: dict[str, object]) -> None:
    """``lock`` taken as another process would (a second open file description holding flock) with its record;
    closed after the case."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    p["held"] = fd


def hold_lock(p: dict[str, Path]) -> None:
    """Another process's lock on ``{run}``."""
    holder = {"host": "node-07", "pid": 48121, "slurm_job_id": "912", "started": "2026-11-29T14:02:11+00:00"}
    held_by_another(p, p["run"] / "run.lock", holder)


def convert_in_progress(p: dict[str, Path]) -> None:
    """Sources for the config's variables under ``{root}/src``, and another conversion's lock on ``{shards}`` (the
    hidden lock file beside it)."""
    write_weatherbench_tree(p["root"] / "src", [2010, 2011], grid=GRID, variables=CHANNELS, hours=24)
    held_by_another(
        p, p["root"] / ".shards.lock", {"host": "node-07", "pid": 48122, "started": "2026-11-29T14:05:40+00:00"}
    )


@dataclass(frozen=True)
class Case:
    """``argv``: the command after ``met2net``; ``names``: what the error line must contain (the file, key or value);
    both formatted with ``paths``. ``setup`` spoils a good file first; ``env`` is the launch environment."""

    argv: str
    names: str
    setup: Callable[[dict[str, Path]], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


TRAIN = "train {cfg}"
RESUME = "train {cfg} run.dir={run} training.max_steps=4"
CASES: dict[str, Case] = {
    # config: the file and key=value overrides
    "config-missing": Case("config show {root}/nope.yaml", "{root}/nope.yaml"),
    "config-directory": Case("config show {shards}", "{shards}"),
    "config-binary": Case("config show {root}/b.yaml", "{root}/b.yaml", write("{root}/b.yaml", b"\xff\xfe\x00\x81")),
    "config-yaml": Case("config show {root}/b.yaml", "line 2", write("{root}/b.yaml", "model:\n  grid: [8, 16\n")),
    "config-not-mapping": Case("config show {root}/b.yaml", "{root}/b.yaml", write("{root}/b.yaml", "- a\n- b\n")),
    "config-unknown-key": Case(
        "config show {root}/b.yaml", "training.lrr", write("{root}/b.yaml", "training:\n  lrr: 0.1\n")
    ),
    "config-unknown-override": Case("config show {cfg} model.hid=8", "model.hid"),
    "config-section-scalar": Case("config show {root}/b.yaml", "'model'", write("{root}/b.yaml", "model: 3\n")),
    "config-wrong-type": Case("config show {cfg} training.batch_size=eight", "training.batch_size"),
    "config-list-type": Case("config show {cfg} data.train_years=2010", "data.train_years"),
    "config-override-form": Case("config show {cfg} training.lr", "training.lr"),
    "config-negative-lr": Case("config show {cfg} training.lr=-1", "training.lr"),
    "config-frames": Case("config show {cfg} model.out_frames=3", "model.out_frames"),
    "config-heads": Case("config show {cfg} model.num_heads=3", "model.num_heads=3"),
    "config-grid": Case("config show {cfg} model.grid=[8]", "model.grid"),
    "config-schedule": Case("config show {cfg} training.schedule=stage3", "training.schedule"),
    "config-precision": Case("config show {cfg} training.precision=fp16", "training.precision"),
    "config-years-overlap": Case("config show {cfg} data.val_years=[2010]", "data.train_years/val_years/test_years"),
    "config-zero-stage": Case("config show {cfg} deepspeed.zero_stage=4", "deepspeed.zero_stage"),
    "config-accumulation": Case("config show {cfg} deepspeed.gradient_accumulation=3", "training.batch_size"),
    "config-shards-no-path": Case("config show {cfg} data.path=", "data.path"),
    "config-best-by": Case("config show {cfg} training.best_by=latent", "training.best_by"),
    "config-timeout": Case("config show {cfg} distributed.timeout_s=0", "distributed.timeout_s"),
    "config-missing-policy": Case("config show {cfg} 'data.missing={{t2m: average}}'", "data.missing.t2m"),
    # data: the shard directory, its files, statistics, and what the config asks of them
    "data-no-directory": Case(TRAIN + " data.path={root}/nowhere", "{root}/nowhere/index.json"),
    "data-index-json": Case(TRAIN, "{shards}/index.json", write("{shards}/index.json", '{"format": 1,')),
    "data-index-format": Case(
        TRAIN, "{shards}/index.json", edit_json("{shards}/index.json", lambda d: d.update(format=9))
    ),
    "data-index-keys": Case(TRAIN, "{shards}/index.json", write("{shards}/index.json", '{"format": 1}')),
    "data-shard-missing": Case(TRAIN, "{shards}/2011.h5", remove("{shards}/2011.h5")),
    "data-shard-truncated": Case(TRAIN, "{shards}/2010.h5", truncate("{shards}/2010.h5")),
    "data-shard-not-hdf5": Case(TRAIN, "{shards}/2010.h5", write("{shards}/2010.h5", b"CDF\x01" + bytes(600))),
    "data-shard-times": Case(
        TRAIN, "{shards}/2011.h5", edit_json("{shards}/index.json", lambda d: d["shards"][1].update(num_times=11))
    ),
    "data-grid": Case(TRAIN + " model.grid=[16,32]", "model.grid"),
    "data-variable": Case(TRAIN + " model.variables=[u10,t2m,tcc]", "'tcc'"),
    "data-stats-missing": Case(TRAIN, "{shards}/stats.json", remove("{shards}/stats.json")),
    "data-stats-json": Case(TRAIN, "{shards}/stats.json", write("{shards}/stats.json", "{")),
    "data-stats-keys": Case(TRAIN, "{shards}/stats.json", write("{shards}/stats.json", '{"format": 1}')),
    "data-stats-channel": Case(
        TRAIN, "{shards}/stats.json", edit_json("{shards}/stats.json", lambda d: d.update(channels=["u10", "t2m", "q"]))
    ),
    "data-stats-years": Case(TRAIN + " data.train_years=[2010,2012]", "data.train_years"),
    "data-split-short": Case(TRAIN + " data.val_years=[2013]", "data.val_years"),
    "data-stats-no-frames": Case("data stats {shards} --train-years 1990", "1990"),
    "data-stats-nan": Case("data stats {shards} --train-years 2010", "2010.h5", nan_in_shard),
    "data-mask-missing": Case(
        TRAIN,
        "{shards}/mask.h5",
        edit_json("{shards}/index.json", lambda d: d.update(mask={"file": "mask.h5", "sha256": "0" * 64})),
    ),
    "data-convert-no-source": Case("data convert {root}/nosrc -c {cfg} -o {root}/out", "{root}/nosrc"),
    "data-convert-no-files": Case("data convert {root} -c {cfg} -o {root}/out", "10m_u_component_of_wind/*.nc"),
    "data-convert-in-progress": Case("data convert {root}/src -c {cfg} -o {shards}", "{shards}", convert_in_progress),
    # checkpoints: weights to start from, a run to resume, a source to evaluate or consolidate
    "ckpt-init-missing": Case(TRAIN + " training.init_from={root}/nothing", "{root}/nothing"),
    "ckpt-init-file": Case(
        TRAIN + " training.init_from={root}/ref.ckpt", "{root}/ref.ckpt", write("{root}/ref.ckpt", "x")
    ),
    "ckpt-init-run-dir": Case(TRAIN + " training.init_from={run}", "{stage}"),
    "ckpt-init-other-model": Case(TRAIN + " training.init_from={stage} model.hid_s=8", "model.hid_s"),
    "ckpt-init-damaged": Case(TRAIN + " training.init_from={stage}", "{ckpt}", flip_bit("{ckpt}/model.pt")),
    "ckpt-init-incomplete": Case(TRAIN + " training.init_from={ckpt}", "{ckpt}", remove("{ckpt}/COMPLETE")),
    "ckpt-stage2-alone": Case(TRAIN + " training.schedule=stage2", "{root}/new/checkpoints/stage1/latest"),
    "ckpt-resume-damaged": Case(RESUME, "{stage}", flip_bit("{ckpt}/engine.pt")),
    "ckpt-resume-meta": Case(RESUME, "{stage}", truncate("{ckpt}/meta.json")),
    "ckpt-resume-other-model": Case(RESUME + " model.hid_s=8", "model.hid_s"),
    "ckpt-resume-hostile-rng": Case(RESUME, "rng_rank0.pt", hostile("rng_rank0.pt")),
    "ckpt-resume-hostile-engine": Case(RESUME, "engine.pt", hostile("engine.pt")),
    "ckpt-init-hostile-weights": Case(TRAIN + " training.init_from={stage}", "model.pt", hostile("model.pt")),
    "ckpt-evaluate-hostile-weights": Case("evaluate {run} -o {root}/ev --split val", "model.pt", hostile("model.pt")),
    "ckpt-evaluate-missing": Case("evaluate {root}/nothing -o {root}/ev", "{root}/nothing"),
    "ckpt-evaluate-override": Case("evaluate {run} -o {root}/ev --split val model.hid_s=8", "model.hid_s"),
    "ckpt-consolidate-missing": Case("consolidate {root}/nothing -o {root}/out", "{root}/nothing"),
    "ckpt-import-not-torch": Case(
        "import-reference {root}/ref.ckpt -o {root}/out", "{root}/ref.ckpt", write("{root}/ref.ckpt", b"x" * 100)
    ),
    # command-line arguments
    "cli-unknown-command": Case("trian {cfg}", "'trian'"),
    "cli-unknown-option": Case("evaluate {run} -o {root}/ev --bogus", "--bogus"),
    "cli-grid": Case("data synthetic {root}/syn --grid 32by64", "'32by64'"),
    "cli-years": Case("data stats {shards} --train-years 20x0", "'20x0'"),
    "cli-rollout": Case("evaluate {run} -o {root}/ev --rollout 0", "--rollout"),
    "cli-predict-init": Case("predict {run} --init yesterday -o {root}/f.nc", "'yesterday'"),
    "cli-consolidate-args": Case("consolidate {run}", "-o OUT"),
    # sbatch/submitit settings of met2net submit
    "submit-stages": Case("submit {cfg} --dry-run --stages stage3", "'stage3'"),
    "submit-stage-order": Case("submit {cfg} --dry-run --stages stage2,stage1", "'stage2,stage1'"),
    "submit-time": Case("submit {cfg} --dry-run --time 1h", "'1h'"),
    "submit-nodes": Case("submit {cfg} --dry-run --nodes 0", "--nodes"),
    "submit-signal-delay": Case("submit {cfg} --dry-run --time 60 --signal-delay 3600", "--signal-delay 3600"),
    "submit-gpus-tasks": Case("submit {cfg} --dry-run --gpus-per-node 4 --tasks-per-node 3", "--gpus-per-node 4"),
    "submit-gpu-layout": Case("submit {cfg} --dry-run --gpu-layout task", "--gpu-layout task"),
    "submit-rounds": Case("submit {cfg} --dry-run --rounds 0", "--rounds"),
    # the launch environment and the run directory
    "env-rank-not-int": Case(TRAIN, "RANK='one'", env=dict(RANK="one", WORLD_SIZE="2", LOCAL_RANK="0")),
    "env-rank-range": Case(TRAIN, "RANK=2", env=dict(RANK="2", WORLD_SIZE="2", LOCAL_RANK="0")),
    "env-world-missing": Case(TRAIN, "WORLD_SIZE", env=dict(RANK="0", LOCAL_RANK="0")),
    "env-no-master": Case(
        TRAIN, "MASTER_ADDR", env=dict(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2")
    ),
    "env-master-port": Case(TRAIN, "MASTER_PORT=70000", env=dict(MASTER_PORT="70000")),
    "env-slurm-tasks": Case(
        TRAIN,
        "SLURM_TASKS_PER_NODE='2'",
        env=dict(
            SLURM_PROCID="0",
            SLURM_STEP_ID="0",
            SLURM_NTASKS="2",
            SLURM_LOCALID="0",
            SLURM_NODEID="0",
            SLURM_NNODES="2",
            SLURM_TASKS_PER_NODE="2",
        ),
    ),
    "env-slurm-nodelist": Case(
        TRAIN,
        "'node[1-'",
        env=dict(
            SLURM_PROCID="0",
            SLURM_STEP_ID="0",
            SLURM_NTASKS="2",
            SLURM_LOCALID="0",
            SLURM_NODEID="0",
            SLURM_STEP_NODELIST="node[1-",
        ),
    ),
    "env-run-dir-file": Case(TRAIN + " run.dir={cfg}", "{cfg}"),
    "env-run-dir-under-file": Case(TRAIN + " run.dir={cfg}/run", "{cfg}"),
    "env-run-dir-in-use": Case(RESUME, "{run}", hold_lock),
}


# -- the documented list ----------------------------------------------------------------------------------------------
ROW = re.compile(r"^\| `(?P<id>[a-z0-9-]+)` \| (?P<input>[^|]+) \| (?P<ticks>`+) ?(?P<message>.+?) ?(?P=ticks) \|$")


def documented() -> dict[str, str]:
    """id → message of the table in docs/troubleshooting.md's "Bad inputs" section."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if match := ROW.match(line):
            assert match["id"] not in rows, f"{match['id']} is listed twice in {DOC}"
            rows[match["id"]] = match["message"]
    return rows


def test_the_documented_list_and_the_cases_agree():
    docs = documented()
    assert len(CASES) >= 40
    assert sorted(set(docs) - set(CASES)) == [], "documented in docs/troubleshooting.md without a test case"
    assert sorted(set(CASES) - set(docs)) == [], "test cases missing from docs/troubleshooting.md"


def holds_in_order(line: str, message: str) -> bool:
    """Whether ``line`` holds the pieces of ``message`` between its "…" in order."""
    at = 0
    for piece in (p.strip() for p in message.split("…")):
        found = line.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def snapshot(root: Path) -> dict[str, str]:
    """Every file's sha256 but ``run.lock``'s: that one only names the last process to claim the run directory."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.name != "run.lock"
    }


def make_world(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A copy of the template under ``tmp_path / "w"`` with its config written, and no launcher variables."""
    root = tmp_path / "w"
    shutil.copytree(template, root)
    p = paths(root)
    p["cfg"].write_text(CONFIG.format(**p))
    for name in [n for n in os.environ if LAUNCH_VARS.match(n)]:
        monkeypatch.delenv(name)
    return p


@pytest.fixture
def world(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    return make_world(template, tmp_path, monkeypatch)


@pytest.mark.parametrize("case_id", list(CASES))
def test_a_bad_input_is_one_line_naming_it_exit_code_2_and_nothing_changed(
    case_id: str, world: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    case = CASES[case_id]
    root, p = tmp_path / "w", world
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.setup:
        case.setup(p)
    before = snapshot(root)
    capsys.readouterr()
    try:
        code = run_cli(shlex.split(case.argv.format(**p)))
    finally:
        if "held" in p:
            os.close(p["held"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert re.match(r"met2net( [a-z -]+)?: error: ", line), err
    assert case.names.format(**p) in line, f"the error does not name {case.names.format(**p)!r}: {line}"
    message = documented().get(case_id, "")
    assert message and holds_in_order(line, message), f"docs/troubleshooting.md says {message!r}; got {line!r}"
    after = snapshot(root)
    assert [name for name, digest in before.items() if after.get(name) != digest] == []
    assert not (root / "pwned").exists()  # nothing in a hostile file ran
