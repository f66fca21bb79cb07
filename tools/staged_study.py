"""The schedules compared at equal optimizer steps × batch (their FLOPs reported beside), judged by the project's own
evaluation: implicit, staged with 1, 2 and 3 rounds (scored after every stage), end-to-end, persistence and
climatology → ``OUT/results.md``, ``OUT/rows.csv``, ``OUT/rmse_w_<variable>.png``.

    .venv/bin/python tools/staged_study.py [-o runs/staged_study] [--steps 360] [--rounds 1 2 3] [--split 1:2]
        [--equal steps|flops] [--config configs/quickstart.yaml] [key=value ...]

Every variant trains ``--steps`` optimizer steps of ``training.batch_size`` in total (with ``--equal flops``
implicit does, and every other variant as many as give it implicit's FLOPs, its stages keeping their ratio):
implicit and end-to-end in one run; staged with R rounds as R × (stage one, stage two), each round's ``steps / R``
split between its two stages as ``--split`` says (default: the config's ``training.stage_steps`` ratio, else 1:1),
round r+1's stage one starting from round r's stage two (as ``slurm/pipeline.sh`` with ``ROUNDS=R`` does). Each
variant runs the ``met2net`` commands a user would, printed and kept in ``OUT/<variant>/commands.txt``; a finished
variant (its evaluations written) is skipped when the study is run again. The built-in dataset is generated,
converted and its statistics computed first when ``data.path`` holds no shards (``configs/quickstart.yaml``'s years:
2010 trains, 2011 validates, 2012 tests). Scores are the test split's, from ``met2net evaluate``; the report's leads
are the first, middle and last of the model's forecast.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schedule_flops import step_gflop_per_sample  # noqa: E402  (tools/, beside this script)

from met2net.config import load_config  # noqa: E402

MET2NET = [sys.executable, "-m", "met2net.cli"]
METRICS = ("rmse", "rmse_w", "acc")  # the paper's plain RMSE, WeatherBench 2's latitude-weighted RMSE, ACC
BASELINES = ("persistence", "climatology")


def run(cmd: list[str], log: Path, commands: Path) -> None:
    """Run one met2net command, its output appended to ``log``; stop the study with the log's tail on failure."""
    line = shlex.join(["met2net", *cmd[len(MET2NET) :]])
    print(f"  $ {line}", flush=True)
    with commands.open("a") as f:
        f.write(line + "\n")
    with log.open("a") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {line}\n{log.read_text()[-3000:]}")


def ensure_data(cfg_path: Path, overrides: list[str], out: Path) -> None:
    """The built-in dataset's netCDF files, shards and statistics, unless ``data.path`` already holds shards."""
    cfg = load_config(cfg_path, overrides)
    shards = Path(cfg.data.path)
    if (shards / "stats.json").is_file():
        return
    years = sorted({*cfg.data.train_years, *cfg.data.val_years, *cfg.data.test_years})
    netcdf = shards.parent / "netcdf"
    grid = "x".join(map(str, cfg.model.grid))
    log, commands = out / "data.log", out / "data_commands.txt"
    run(
        [*MET2NET, "data", "synthetic", str(netcdf), "--years", f"{years[0]}-{years[-1]}", "--grid", grid],
        log,
        commands,
    )
    run([*MET2NET, "data", "convert", str(netcdf), "-c", str(cfg_path), "-o", str(shards), *overrides], log, commands)
    train = ",".join(map(str, cfg.data.train_years))
    run([*MET2NET, "data", "stats", str(shards), "--train-years", train], log, commands)


def variants(
    steps: int, rounds: list[int], end_to_end: bool = True, split: tuple[int, int] = (1, 1)
) -> list[tuple[str, list[tuple[str, int]]]]:
    """(name, [(schedule, steps) per stage in order]) of every variant; every variant sums to ``steps``; each round's
    steps are shared between stage one and stage two as ``split``."""
    out = [("implicit", [("implicit", steps)])]
    for r in rounds:
        unit = r * sum(split)
        if steps % unit:
            sys.exit(
                f"--steps {steps} does not split into {r} rounds of stage one : stage two = {split[0]}:{split[1]}: "
                f"choose a multiple of {unit}"
            )
        one, two = (steps // unit * share for share in split)
        out.append((f"staged_{r}r", [(s, n) for _ in range(r) for s, n in (("stage1", one), ("stage2", two))]))
    if end_to_end:
        out.append(("end_to_end", [("end_to_end", steps)]))
    return out


def parse_split(text: str) -> tuple[int, int]:
    """``A:B`` → (A, B), both positive."""
    try:
        one, two = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split {text!r}: expected A:B, e.g. 1:2") from None
    if one < 1 or two < 1:
        raise argparse.ArgumentTypeError(f"--split {text!r}: both shares must be ≥ 1")
    return one, two


def config_split(stage_steps: dict[str, int]) -> tuple[int, int]:
    """The ratio of the config's ``training.stage_steps`` in lowest terms (60, 120 → 1:2); 1:1 without both."""
    if "stage1" not in stage_steps or "stage2" not in stage_steps:
        return 1, 1
    one, two = stage_steps["stage1"], stage_steps["stage2"]
    g = math.gcd(one, two)
    return one // g, two // g


def train_and_evaluate(name: str, stages: list[tuple[str, int]], args: argparse.Namespace) -> list[Path]:
    """Train the variant's stages and evaluate after each; the evaluation directories in stage order."""
    base = args.out / name
    evals = [base / f"eval_{i + 1}_{schedule}" for i, (schedule, _) in enumerate(stages)]
    if all((e / "metrics.csv").is_file() for e in evals):
        print(f"{name}: done before, skipped")
        return evals
    base.mkdir(parents=True, exist_ok=True)
    log, commands = base / "log.txt", base / "commands.txt"
    commands.write_text("")
    previous = None
    for i, (schedule, steps) in enumerate(stages):
        round_dir = base / f"round_{i // 2 + 1}"
        cmd = [*MET2NET, "train", str(args.config), f"training.schedule={schedule}", f"training.max_steps={steps}"]
        cmd += [f"run.dir={round_dir}", "training.progress=false", *args.overrides]
        if schedule == "stage1" and previous is not None:
            cmd.append(f"training.init_from={previous}")  # a new round starts from the last stage two
        print(f"{name}: stage {i + 1}/{len(stages)} ({schedule}, {steps} steps)", flush=True)
        run(cmd, log, commands)
        previous = round_dir / "checkpoints" / schedule
        run(
            [*MET2NET, "evaluate", str(previous), "-o", str(evals[i]), "--no-plots", *args.data_overrides],
            log,
            commands,
        )
    return evals


LEAD_COLUMNS = {"lead_hours": "h", "lead_months": "months"}  # metrics.csv's lead column → its unit


def lead_column(path: Path) -> str:
    """``lead_hours``, or ``lead_months`` for monthly data (docs/evaluation.md)."""
    with path.open() as f:
        return next(c for c in csv.DictReader(f).fieldnames or () if c in LEAD_COLUMNS)


def read_scores(path: Path) -> dict[tuple[str, str, str, int], float]:
    """(model, metric, variable, lead) → value, from an evaluation's metrics.csv."""
    lead = lead_column(path)
    with path.open() as f:
        return {
            (r["model"], r["metric"], r["variable"], int(r[lead])): float(r["value"])
            for r in csv.DictReader(f)
            if r["metric"] in METRICS
        }


def read_rows(path: Path) -> tuple[dict[str, dict[tuple[str, str, str, int], float]], str]:
    """A study's rows.csv (`write_report`): row → (model, metric, variable, lead) → value; and the leads' unit."""
    lead, rows = lead_column(path), {}
    with path.open() as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["row"], {})[(r["model"], r["metric"], r["variable"], int(r[lead]))] = float(r["value"])
    return rows, LEAD_COLUMNS[lead]


def ratio_over_leads(a: dict[int, float], b: dict[int, float]) -> float:
    """``a``'s scores averaged over its leads, divided by ``b``'s at the same leads (below 1: ``a`` is better)."""
    return sum(a.values()) / sum(b[lead] for lead in a)


def training_seconds(variant: Path) -> float:
    """Each stage's first ``start`` record to its last ``train`` record in metrics.jsonl, summed: the training time
    even when the study was restarted (a finished stage run again trains no step and adds no train record)."""
    total = 0.0
    for log in variant.glob("round_*/metrics.jsonl"):
        records = [json.loads(line) for line in log.read_text().splitlines()]
        for schedule in {r["schedule"] for r in records}:
            own = [r for r in records if r["schedule"] == schedule]
            start = next(r["time"] for r in own if r["split"] == "start")
            total += max(r["time"] for r in own if r["split"] == "train") - start
    return total


def training_flops(stages: list[tuple[str, int]], batch: int, gflop_per_sample: dict[str, float]) -> float:
    """A variant's training compute in FLOPs: each stage's optimizer steps × batch × its schedule's GFLOP per sample
    per step (``gflop_per_sample``, counted by tools/schedule_flops.py). Equal steps are not equal compute: a
    staged step skips work an implicit one does (docs/results.md, "At equal FLOPs")."""
    return sum(steps * batch * gflop_per_sample[schedule] * 1e9 for schedule, steps in stages)


def at_equal_flops(
    plans: list[tuple[str, list[tuple[str, int]]]], gflop_per_sample: dict[str, float]
) -> list[tuple[str, list[tuple[str, int]]]]:
    """``plans`` (implicit first) with every other variant's steps scaled so that its FLOPs are implicit's, as near
    as its stages' ratio allows: each stage keeps its share (the stages' steps stay multiples of their greatest
    common divisor), so a staged variant keeps its rounds and its split."""
    target = training_flops(plans[0][1], 1, gflop_per_sample)
    out = [plans[0]]
    for name, stages in plans[1:]:
        unit = math.gcd(*(n for _, n in stages))
        base = [(schedule, n // unit) for schedule, n in stages]
        times = max(1, round(target / training_flops(base, 1, gflop_per_sample)))
        out.append((name, [(schedule, n * times) for schedule, n in base]))
    return out


def stage_steps_at_equal_flops(
    implicit_steps: int, rounds: int, split: tuple[int, int], gflop_per_sample: dict[str, float]
) -> dict[str, int]:
    """The ``training.stage_steps`` that give a pipeline of ``rounds`` rounds, its stages ``split``, the FLOPs of
    ``implicit_steps`` implicit steps, as near as the split allows (four rounds of 198 and 396 for 1,440, which
    configs/quickstart.yaml trains: docs/results.md, "The default pipeline's budget" and "Goal 2, clause by clause")."""
    pipeline = [("stage1", split[0]), ("stage2", split[1])] * rounds
    plans = at_equal_flops([("implicit", [("implicit", implicit_steps)]), ("pipeline", pipeline)], gflop_per_sample)
    return dict(plans[1][1][:2])


def write_report(
    args: argparse.Namespace, batch: int, rows: list, lead: str, plans: list, per_sample: dict[str, float]
) -> None:
    """results.md (per variable: RMSE, latitude-weighted RMSE and ACC at three leads for every row and the
    baselines; the goal check), rows.csv (every score of every row) and one plot of rmse_w against lead per
    variable (the final model of every variant and the baselines). ``plans``: the variants' stages as trained;
    ``per_sample``: each schedule's GFLOP per sample per step (the compute column)."""
    scores = rows[0][3]
    unit = LEAD_COLUMNS[lead]
    variables = sorted({k[2] for k in scores}, key=[k[2] for k in scores].index)
    leads = sorted({k[3] for k in scores})
    shown = sorted({leads[0], leads[(len(leads) - 1) // 2], leads[-1]})
    table = [(label, "met2net", s) for _, label, _, s in rows] + [(b, b, scores) for b in BASELINES]
    shared = "optimizer steps × batch" if args.equal == "steps" else "FLOPs"
    lines = [
        f"# Schedules at equal {shared} (tools/staged_study.py)",
        "",
        f"`{shlex.join(['.venv/bin/python', 'tools/staged_study.py', *sys.argv[1:]])}`",
        "",
        f"Every variant: {args.steps} optimizer steps × batch {batch} in total. Test split; leads in {lead[5:]}."
        if args.equal == "steps"
        else f"implicit: {args.steps} optimizer steps × batch {batch}; every other variant as many steps as give it "
        f"implicit's FLOPs (its stages keep their ratio). Test split; leads in {lead[5:]}.",
        "",
    ]
    lines += [
        "| variant | stages (schedule × optimizer steps) | training compute | training wall time |",
        "|---|---|---:|---:|",
    ]
    implicit = training_flops(plans[0][1], batch, per_sample)
    for name, stages in plans:
        spent, flops = training_seconds(args.out / name), training_flops(stages, batch, per_sample)
        compute = f"{flops / 1e12:.2f} TFLOP ({flops / implicit:.2f}× implicit's)"
        lines.append(f"| {name} | {' → '.join(f'{s} × {n}' for s, n in stages)} | {compute} | {spent:.0f} s |")
    counted = ", ".join(f"{s} {g:.3f}" for s, g in per_sample.items())
    lines += [
        "",
        f"Compute: optimizer steps × batch × each schedule's GFLOP per sample per step ({counted}; "
        "tools/schedule_flops.py). Commands: `<variant>/commands.txt`.",
        "",
    ]
    for var in variables:
        header = " | ".join(f"{m} {n} {unit}" for m in METRICS for n in shown)
        lines += [f"## {var}", "", f"| model | {header} |", "|---|" + "---:|" * (len(METRICS) * len(shown))]
        for label, model, s in table:
            cells = [s.get((model, m, var, lead)) for m in METRICS for lead in shown]
            lines.append(f"| {label} | " + " | ".join("" if c is None else f"{c:.4g}" for c in cells) + " |")
        lines.append("")
    lines += goal_check(rows, variables, leads, unit)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    with (args.out / "rows.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "model", "metric", "variable", lead, "value"])
        for _, label, _, s in rows:
            w.writerows([label, *k, v] for k, v in sorted(s.items()))
    plot(args.out, rows, variables, leads, unit)
    print(f"report: {args.out / 'results.md'}")


def goal_check(rows: list, variables: list[str], leads: list[int], unit: str) -> list[str]:
    """Issue 12's goal, on rmse_w: a final model beats persistence and climatology at every lead for every
    variable, and (besides implicit) is within 5 % of the implicit schedule's (mean over leads, per variable)."""
    finals = {name: s for name, _, final, s in rows if final}
    implicit = finals.get("implicit")
    out = ["## Goal check (rmse_w)", ""]
    for name, s in finals.items():
        lost = [
            f"{v} {lead} {unit} vs {b}"
            for v in variables
            for lead in leads
            for b in BASELINES
            if s[("met2net", "rmse_w", v, lead)] >= s[(b, "rmse_w", v, lead)]
        ]
        ratios = {
            v: ratio_over_leads(
                {lead: s[("met2net", "rmse_w", v, lead)] for lead in leads},
                {lead: implicit[("met2net", "rmse_w", v, lead)] for lead in leads},
            )
            for v in variables
        }
        worst = max(ratios, key=ratios.get)
        line = f"- {name}: beats both baselines at every lead: {'yes' if not lost else 'no (' + ', '.join(lost) + ')'}"
        if name != "implicit":
            line += f"; rmse_w / implicit's, worst variable: {worst} {ratios[worst]:.3f}"
            line += f" ({'within' if ratios[worst] <= 1.05 else 'not within'} 5 %)"
        out.append(line)
    return [*out, ""]


def plot(out: Path, rows: list, variables: list[str], leads: list[int], unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = [(name, s) for name, _, final, s in rows if final]
    for var in variables:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, s in finals:
            ax.plot(leads, [s[("met2net", "rmse_w", var, lead)] for lead in leads], marker="o", label=name)
        for b, style in zip(BASELINES, ("--", ":"), strict=True):
            ax.plot(leads, [finals[0][1][(b, "rmse_w", var, lead)] for lead in leads], "k" + style, label=b)
        ax.set(xlabel=f"lead ({unit})", ylabel="rmse_w", title=var)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"rmse_w_{var}.png", dpi=100)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "runs/staged_study")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=360, help="optimizer steps of every variant in total")
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=True, help="the ablation too")
    parser.add_argument("--split", type=parse_split, help="stage one : stage two steps in each round, e.g. 1:2")
    parser.add_argument(
        "--equal",
        choices=("steps", "flops"),
        default="steps",
        help="what every variant gets as much of as implicit: optimizer steps × batch (default) or FLOPs",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_overrides = [o for o in args.overrides if o.startswith("data.")]
    ensure_data(args.config, args.overrides, args.out)
    cfg = load_config(args.config, args.overrides)
    plans = variants(args.steps, args.rounds, args.end_to_end, args.split or config_split(cfg.training.stage_steps))
    schedules = sorted({schedule for _, stages in plans for schedule, _ in stages})
    per_sample = {s: step_gflop_per_sample(str(args.config), s, args.overrides) for s in schedules}
    plans = plans if args.equal == "steps" else at_equal_flops(plans, per_sample)
    rows, lead = [], "lead_hours"
    for name, stages in plans:
        for i, e in enumerate(train_and_evaluate(name, stages, args)):
            label = name if len(stages) == 1 else f"{name}, after stage {i + 1} ({stages[i][0]})"
            lead = lead_column(e / "metrics.csv")
            rows.append((name, label, i == len(stages) - 1, read_scores(e / "metrics.csv")))
    write_report(args, cfg.training.batch_size, rows, lead, plans, per_sample)


if __name__ == "__main__":
    main()
