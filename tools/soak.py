"""Kill -9 drills: stop a run at a random moment, run the same command again, and require that it resumed from the
last complete checkpoint and ended bitwise equal to a run that was never stopped.

    .venv/bin/python tools/soak.py --trials 20 [--seed S] [--kinds single,zero2,convert] [--work DIR] [--keep]

Each trial picks, from the seed, a kind of job and a moment:

- ``single``: one process trains stage one (6 steps) then stage two (4 steps), a checkpoint every 2 steps, on the
  built-in synthetic data; ``zero2``: the same on 2 ranks under torchrun with DeepSpeed ZeRO-2 (gloo);
- ``convert``: ``met2net data convert`` of three years of generated netCDF, then ``met2net data stats``.

The moment is a random time within the job, or (training) the instant a checkpoint's partial directory appears
(inside its write) or the instant stage one's last checkpoint is published (the stage boundary), or (conversion) the
instant a hidden temporary shard or ``stats.json`` appears, each plus a random delay. What is killed: the whole job
(every process of it) or, under torchrun, one rank (torchrun must then end the job; a job still running after
``--hang-s`` fails the trial). The same commands then run again, uninterrupted, and the trial checks that

- after the kill, every visible ``step_N`` directory is complete (holds ``COMPLETE``), every visible shard and
  ``stats.json`` is byte for byte the reference's: nothing partial is ever under a name readers use;
- the re-run of each stage logged ``resume`` from the newest complete checkpoint that existed, and none when none
  existed (never a partial one, never a silent start from step 0);
- the final checkpoint of each stage holds the reference's tensors, compared with ``torch.equal`` in every ``.pt``
  file (``model.pt``, the engine's or DeepSpeed's optimizer and model states, RNG and BatchNorm files); shards,
  ``index.json`` and ``stats.json`` are byte for byte the reference's and no temporary file is left.

The seed is printed first; a failed trial prints what differed and the exit code is 1. Why a tool and not only
tests: the tests fix the moments they kill at; this draws them, so repeated runs reach moments nobody thought of.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # this process loads DeepSpeed's files: no GPU probe
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent
KINDS = ("single", "zero2", "convert")
STAGES = {"stage1": 6, "stage2": 4}  # schedule → its steps; a checkpoint every 2 steps
TINY = [
    "model.in_frames=2",
    "model.out_frames=2",
    "model.hid_s=4",
    "model.hid_t=16",
    "model.grid=[16,32]",
    "model.num_translator_blocks=1",
    "training.batch_size=4",
    "training.val_every=2",
    "training.val_batches=2",
    "training.log_every=2",
    "training.checkpoint_every=2",
    "training.progress=false",
    "data.train_years=[2010]",
    "data.val_years=[2011]",
    "data.test_years=[]",
    "data.step_hours=24",
    "data.source=synthetic",
    "distributed.timeout_s=60",  # a rank left alone fails within a minute, not the default five
]
CONVERT = ["model.grid=[8,16]", "data.train_years=[2010]", "data.val_years=[2011]", "data.test_years=[2012]"]
TMP_NAME = re.compile(r"^\..+\.tmp$")


# -- the jobs -------------------------------------------------------------------------------------------------------
def train_commands(kind: str, run: Path) -> list[list[str]]:
    """Stage one then stage two, as a user's script runs them (the second only once the first succeeded)."""
    launcher = [PY]
    extra = []
    if kind == "zero2":
        launcher = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", PY]
        extra = ["deepspeed.zero_stage=2"]
    return [
        [
            *launcher,
            "-m",
            "met2net.cli",
            "train",
            str(ROOT / "configs/quickstart.yaml"),
            *TINY,
            *extra,
            f"run.dir={run}",
        ]
        + [f"training.schedule={s}", f"training.max_steps={n}"]
        for s, n in STAGES.items()
    ]


def convert_commands(src: Path, out: Path) -> list[list[str]]:
    config = str(ROOT / "configs/quickstart.yaml")
    cli = [PY, "-m", "met2net.cli", "data"]
    return [
        [*cli, "convert", str(src), "-c", config, "-o", str(out), *CONVERT, f"data.path={out}"],
        [*cli, "stats", str(out), "--train-years", "2010"],
    ]


def commands(kind: str, work: Path, target: Path) -> list[list[str]]:
    return convert_commands(work / "netcdf", target) if kind == "convert" else train_commands(kind, target)


def environment() -> dict[str, str]:
    with socket.socket() as s:  # torchrun --standalone picks its own port; mpirun-style launchers read this
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(port)}


# -- processes ------------------------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (torchrun's workers live in sessions of their own: a process-group kill
    misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_of(pid: int) -> int | None:
    """The ``RANK`` a launcher gave process ``pid`` (None: not a rank)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if b"met2net.cli" not in cmdline:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- one trial ------------------------------------------------------------------------------------------------------
@dataclass
class Moment:
    """When to kill: ``fire(elapsed, command_index)`` is polled every few milliseconds while the job runs."""

    label: str
    fire: Callable[[float, int], bool]
    delay_s: float = 0.0


@dataclass
class Kill:
    """What happened: the command running, what was killed, and what lay on disk right after."""

    at_s: float = 0.0
    command: int = -1
    what: str = ""
    ended_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_killed(cmds: list[list[str]], moment: Moment, target: str, victim: int, hang_s: float) -> Kill:
    """Run ``cmds`` one after another until ``moment`` fires, then SIGKILL the job or one rank of it; the commands
    after a killed one do not run (as in a script under ``set -e``)."""
    kill, start, fired_at = Kill(), time.monotonic(), None
    for i, cmd in enumerate(cmds):
        err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty job never blocks on a full pipe
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            now = time.monotonic() - start
            if fired_at is None and moment.fire(now, i):
                fired_at = now
            if fired_at is not None and now >= fired_at + moment.delay_s:
                kill.at_s, kill.command = now, i
                _kill(proc, target, victim, kill, hang_s)
                return kill
            time.sleep(0.002)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-2000:]
            kill.notes.append(f"command {i} exited {proc.returncode} before any kill: {tail}")
            return kill
    kill.what = "nothing (the job ended before the moment came)"
    return kill


def _kill(proc: subprocess.Popen, target: str, victim: int, kill: Kill, hang_s: float) -> None:
    """SIGKILL rank ``victim`` (``target`` "rank", where the job has ranks yet), else every process of the job."""
    family = descendants(proc.pid)
    ranks = {r: p for p in family if (r := rank_of(p)) is not None}
    if target == "rank" and victim in ranks:
        rank = victim
        kill_all([ranks[rank]])
        kill.what = f"rank {rank}"
        t0 = time.monotonic()
        try:
            proc.wait(timeout=hang_s)
        except subprocess.TimeoutExpired:
            kill.notes.append(f"the job was still running {hang_s:.0f} s after rank {rank} was killed")
        kill.ended_s = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in family if alive(p)]
        if left:
            kill.notes.append(f"processes {left} still running 30 s after the job ended")
        kill_all([proc.pid, *descendants(proc.pid), *left])
    else:
        kill_all([proc.pid, *family])
        kill.what = "the whole job" if family else "the process"
    proc.wait()
    # A process killed inside a system call (an fsync) ends only when the call returns, holding the run's lock till
    # then: the re-run waits for every one of them to be gone, as a user would see the job gone first.
    deadline = time.monotonic() + 60
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    if any(alive(p) for p in family):
        kill.notes.append(f"processes {[p for p in family if alive(p)]} still there 60 s after SIGKILL")


def complete_steps(stage: Path) -> list[Path]:
    return sorted(stage.glob("step_*"), key=lambda p: int(p.name.split("_")[1])) if stage.is_dir() else []


def check_after_kill(kind: str, target: Path, reference: Path) -> tuple[dict[str, Path | None], list[str]]:
    """What lies on disk right after the kill: nothing partial under a reader's name. For training, the checkpoint
    each stage must resume from (None: no complete one)."""
    problems: list[str] = []
    expected: dict[str, Path | None] = {}
    if kind == "convert":
        for path in sorted(target.glob("*")) if target.is_dir() else []:
            if path.name.startswith(".") or not (reference / path.name).exists():
                continue
            if path.read_bytes() != (reference / path.name).read_bytes():
                problems.append(f"{path.name} is visible but differs from the uninterrupted conversion's")
        return expected, problems
    for stage in STAGES:
        steps = complete_steps(target / "checkpoints" / stage)
        for step in steps:
            if not (step / "COMPLETE").is_file():
                problems.append(f"{step} is visible without COMPLETE")
        expected[stage] = steps[-1] if steps else None
    return expected, problems


def run_again(cmds: list[list[str]], timeout_s: float, log: Path) -> list[str]:
    """Run ``cmds`` uninterrupted; what failed, with met2net's error lines (the whole stderr is kept in ``log``)."""
    for i, cmd in enumerate(cmds):
        out = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            log.write_text(out.stderr)
            errors = [line for line in out.stderr.splitlines() if "met2net: error" in line or "Error:" in line]
            return [
                f"re-run command {i} exited {out.returncode}: {' | '.join(errors[:5]) or out.stderr[-1000:]} ({log})"
            ]
    return []


def check_resumes(target: Path, offset: int, expected: dict[str, Path | None]) -> tuple[list[str], list[str]]:
    """The re-run's ``resume`` records (metrics.jsonl from ``offset`` on) against the checkpoints that existed."""
    log = target / "metrics.jsonl"
    text = log.read_bytes()[offset:].decode() if log.exists() else ""
    try:
        records = [json.loads(line) for line in text.splitlines() if line]
    except json.JSONDecodeError as e:
        return [], [f"{log}: a record of the re-run is not JSON ({e})"]
    said, problems = [], []
    for stage, ckpt in expected.items():
        froms = [r["from"] for r in records if r.get("split") == "resume" and r.get("schedule") == stage]
        starts = [r for r in records if r.get("split") == "start" and r.get("schedule") == stage]
        if not starts:
            problems.append(f"{stage}: the re-run logged no start")
        if ckpt is None and froms:
            problems.append(f"{stage}: resumed from {froms[0]} although no complete checkpoint existed")
        elif ckpt is not None and froms != [str(ckpt)]:
            problems.append(f"{stage}: resumed from {froms or 'nothing (step 0)'}, expected {ckpt}")
        said.append(f"{stage} from {Path(froms[0]).name if froms else 'the start'}")
    return said, problems


def tensors(obj: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{path}/{i}")


def load_any(path: Path) -> Any:
    # weights_only=False: DeepSpeed's optimizer and model-state files hold DeepSpeed classes. These are files this
    # tool's own runs just wrote, never anyone else's.
    return torch.load(path, map_location="cpu", weights_only=False)


def compare_final(kind: str, target: Path, reference: Path) -> tuple[int, list[str]]:
    """Count of tensors compared and what differed between the trial's final state and the reference's."""
    problems: list[str] = []
    if kind == "convert":
        mine = sorted(p.name for p in target.iterdir())
        theirs = sorted(p.name for p in reference.iterdir())
        if mine != theirs:
            return 0, [f"{target} holds {mine}, the uninterrupted conversion {theirs}"]
        differ = [n for n in mine if (target / n).read_bytes() != (reference / n).read_bytes()]
        return len(mine), [f"{n} differs byte for byte" for n in differ]
    count = 0
    for stage, steps in STAGES.items():
        a, b = target / "checkpoints" / stage / f"step_{steps}", reference / "checkpoints" / stage / f"step_{steps}"
        files = sorted(p.relative_to(b) for p in b.rglob("*.pt"))
        mine = sorted(p.relative_to(a) for p in a.rglob("*.pt")) if a.is_dir() else []
        if files != mine:
            problems.append(f"{a}: files {[str(f) for f in mine]}, reference {[str(f) for f in files]}")
            continue
        for rel in files:
            ours, ref = dict(tensors(load_any(a / rel))), dict(tensors(load_any(b / rel)))
            if ours.keys() != ref.keys():
                problems.append(f"{a / rel}: tensors {sorted(ours.keys() ^ ref.keys())[:5]} not in both")
                continue
            for key, t in ref.items():
                count += 1
                if t.dtype != ours[key].dtype or t.shape != ours[key].shape or not torch.equal(t, ours[key]):
                    problems.append(f"{a / rel}{key} differs from the uninterrupted run's")
    return count, problems


# -- moments --------------------------------------------------------------------------------------------------------
def partial_appears(stage: Path, step: int) -> Callable[[float, int], bool]:
    """Fires while step ``step``'s checkpoint is being written (its partial directory exists), or once it is
    published if the write was too quick to see."""
    partial, final = stage / f".step_{step}.partial", stage / f"step_{step}"
    return lambda _t, _i: partial.exists() or final.exists()


def stage_one_published(stage: Path) -> Callable[[float, int], bool]:
    pointer = stage / "latest"

    def fire(_t: float, i: int) -> bool:
        try:
            return i > 0 or pointer.read_text().strip() == f"step_{STAGES['stage1']}"
        except OSError:
            return False

    return fire


def temporary_appears(out: Path, name: str) -> Callable[[float, int], bool]:
    def fire(_t: float, _i: int) -> bool:
        try:
            return any(TMP_NAME.match(p.name) and name in p.name for p in out.iterdir())
        except OSError:
            return False

    return fire


def draw_moment(kind: str, target: Path, durations: list[float], rng: random.Random) -> Moment:
    """One of the moments the module's docstring lists; ``durations``: the reference run's, command by command."""
    choice = rng.choice(["random", "checkpoint", "boundary"] if kind != "convert" else ["random", "shard", "stats"])
    if choice == "random":
        t = rng.uniform(0, sum(durations))
        return Moment(f"at {t:.2f} s", lambda now, _i: now >= t)
    if choice == "shard":
        return Moment("inside a shard's write", temporary_appears(target, ".h5"), rng.uniform(0, 0.05))
    if choice == "stats":  # too quick to catch its temporary file: a random moment of the command
        t = rng.uniform(0, durations[1])
        return Moment(f"{t:.2f} s into data stats", lambda now, i: i == 1, t)
    if choice == "checkpoint":
        stage = rng.choice(list(STAGES))
        step = rng.randrange(2, STAGES[stage] + 1, 2)
        moment = partial_appears(target / "checkpoints" / stage, step)
        return Moment(f"inside {stage}'s step_{step} write", moment, rng.uniform(0, 0.01))
    delay = rng.uniform(0, 2.0)
    return Moment(f"{delay:.2f} s after stage1's end", stage_one_published(target / "checkpoints/stage1"), delay)


@dataclass
class Trial:
    index: int
    kind: str
    target: str
    moment: str = ""
    kill: Kill = field(default_factory=Kill)
    resumed: list[str] = field(default_factory=list)
    compared: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        k = self.kill
        where = f"command {k.command + 1}" if k.command >= 0 else "-"
        ended = f", job ended {k.ended_s:.1f} s later" if k.what.startswith("rank") else ""
        head = f"trial {self.index}: {self.kind}, kill {self.target} {self.moment}: killed {k.what}"
        head += f" at {k.at_s:.2f} s ({where}){ended}"
        what = "tensors" if self.kind != "convert" else "files"
        body = f"; re-run resumed {', '.join(self.resumed)}" if self.resumed else ""
        verdict = "FAILED: " + "; ".join(self.problems) if self.problems else f"{self.compared} {what} equal"
        return f"{head}{body}; {verdict}"


def trial(index: int, kind: str, work: Path, references: dict[str, tuple[Path, float]], rng: random.Random, args: Any):
    target = work / f"trial_{index:03d}_{kind}"
    reference, durations = references[kind]
    t = Trial(index, kind, rng.choice(["job", "rank"]) if kind == "zero2" else "job")
    victim = rng.randrange(2)  # drawn whatever happens, so every trial's draws follow from the seed alone
    moment = draw_moment(kind, target, durations, rng)
    t.moment = moment.label
    cmds = commands(kind, work, target)
    t.kill = run_killed(cmds, moment, t.target, victim, args.hang_s)
    t.problems += t.kill.notes
    pattern = "*.tmp" if kind == "convert" else ".step_*.partial"
    partial = [str(p.relative_to(target)) for p in target.rglob(pattern)] if target.is_dir() else []
    if partial:
        t.kill.what += f" with {', '.join(partial)} on disk"
    expected, problems = check_after_kill(kind, target, reference)
    t.problems += problems
    log = target / "metrics.jsonl"
    offset = log.stat().st_size if log.exists() else 0
    t.problems += run_again(cmds, args.rerun_timeout_s, work / f"{target.name}.log")
    if not t.problems and kind != "convert":
        t.resumed, problems = check_resumes(target, offset, expected)
        t.problems += problems
    if not t.problems:
        t.compared, problems = compare_final(kind, target, reference)
        t.problems += problems
    if not t.problems and not args.keep:
        shutil.rmtree(target, ignore_errors=True)
    return t


def make_reference(kind: str, work: Path) -> tuple[Path, list[float]]:
    """An uninterrupted run of ``kind``'s commands; its directory and how long each command took."""
    if kind == "convert" and not (work / "netcdf").is_dir():
        cmd = [PY, "-m", "met2net.cli", "data", "synthetic", str(work / "netcdf"), "--years", "2010-2012"]
        subprocess.run([*cmd, "--grid", "8x16"], cwd=ROOT, env=environment(), check=True, capture_output=True)
    target = work / f"reference_{kind}"
    durations = []
    for cmd in commands(kind, work, target):
        start = time.monotonic()
        problems = run_again([cmd], 600, work / f"{target.name}.log")
        if problems:
            raise SystemExit(f"soak: the uninterrupted {kind} run failed: {problems[0]}")
        durations.append(time.monotonic() - start)
    return target, durations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=None, help="default: drawn from the OS, printed")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--work", type=Path, default=None, help="default: a temporary directory, removed at the end")
    p.add_argument("--keep", action="store_true", help="keep every trial's directory (failed ones are always kept)")
    p.add_argument("--one-stage", action="store_true", help="train stage one only (quicker: the CI test's trials)")
    p.add_argument("--hang-s", type=float, default=180.0, help="how long a job may run on after one rank is killed")
    p.add_argument("--rerun-timeout-s", type=float, default=600.0)
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        p.error(f"--kinds: choose from {', '.join(KINDS)}, got {args.kinds!r}")
    if args.one_stage:
        del STAGES["stage2"]
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"soak: seed {seed}, {args.trials} trial(s) of {', '.join(kinds)}", flush=True)
    rng = random.Random(seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="met2net-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    drawn = [rng.choice(kinds) for _ in range(args.trials)]
    references = {}
    for kind in dict.fromkeys(drawn):
        references[kind] = make_reference(kind, work)
        took = " + ".join(f"{d:.1f}" for d in references[kind][1])
        print(f"soak: reference {kind} run: {took} s", flush=True)
    failed = 0
    started = time.monotonic()
    for i, kind in enumerate(drawn, 1):
        t = trial(i, kind, work, references, rng, args)
        failed += bool(t.problems)
        print(t.line(), flush=True)
    print(
        f"soak: {args.trials - failed}/{args.trials} trials passed in {time.monotonic() - started:.0f} s (seed {seed})"
    )
    if args.work is None and not failed and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    elif failed:
        print(f"soak: failed trials' directories kept under {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
