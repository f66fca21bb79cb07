"""`met2net <command>`: a thin layer that parses arguments and calls the package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from met2net.config import DataConfig, load_config, resolve_periods
from met2net.data.stats import parse_years
from met2net.errors import UserError, error_line


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. training.lr=3e-4")


def cmd_config_show(args: argparse.Namespace) -> int:
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from met2net.train import run_train

    return run_train(load_config(args.config, args.overrides)).exit_code


def cmd_check(args: argparse.Namespace) -> int:
    from met2net.check import preflight

    checklist = preflight(args.config, args.overrides, args.world_size, args.checksums, step=not args.no_step)
    print(checklist.json(args.config) if args.json else checklist.text(args.config))
    return 0 if checklist.ok else 2


def cmd_submit(args: argparse.Namespace) -> int:
    """``met2net.launch.submit_pipeline``'s two steps, with the run directory at hand for the last line."""
    from met2net.launch import JobFailed, plan_pipeline

    # validates the config and every option before anything is queued
    pipeline = plan_pipeline(
        args.config,
        args.overrides,
        executor=args.executor,
        stages=args.stages,
        rounds=args.rounds,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        time=args.time,
        partition=args.partition,
        account=args.account,
        signal_delay_s=args.signal_delay,
        max_requeues=args.max_requeues,
        gpu_layout=args.gpu_layout,
    )
    print(pipeline.describe())
    if args.dry_run:
        print("dry run: nothing submitted")
        return 0
    try:
        pipeline.submit(echo=print)
    except JobFailed as error:  # a local job failed; the ones after it were not started
        print(error)
        return 1
    print(
        f"watch with: met2net status {pipeline.run_dir}"
        + ("  (squeue --me; sacct)" if args.executor == "slurm" else "")
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from met2net.evaluation.evaluate import evaluate
    from met2net.evaluation.report import summary, write_outputs, write_plots

    ev = evaluate(
        args.source,
        args.split,
        args.overrides,
        args.rollout,
        args.batch_size,
        progress=True,
        window_days=args.climatology_window,
    )
    if ev.rank == 0:
        files = write_outputs(ev, args.out)
        if not args.no_plots:
            files += write_plots(ev, Path(args.out), args.map_variables, args.map_leads)
        print(f"evaluated {ev.source}")
        print(summary(ev))
        print(
            f"wrote {', '.join(str(f) for f in files[:3])}"
            + (f" and {len(files) - 3} plots under {Path(args.out) / 'plots'}" if len(files) > 3 else "")
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from met2net.evaluation.predict import predict, write_forecast

    ds = predict(args.source, args.init, args.overrides, args.rollout)
    path = write_forecast(ds, args.out)
    print(
        f"wrote {path}: {ds.sizes['forecast_reference_time']} forecast(s) × {ds.sizes['forecast_period']} leads of "
        f"{', '.join(ds.data_vars)}"
    )
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    from met2net.consolidate import consolidate, read_meta, verify_consolidated

    if args.verify:
        problems = verify_consolidated(args.verify)
        for problem in problems:
            print(f"{args.verify}: {problem}")
        if not problems:
            meta = read_meta(args.verify)
            print(
                f"{args.verify}: intact ({meta['weights']} weights, {meta['parameters']:,} parameters, "
                f"{len(meta['tensors'])} tensors, {meta['schedule']} step {meta['step']})"
            )
        return 1 if problems else 0
    if not args.ckpt or not args.out:
        raise UserError("consolidate: give CKPT and -o OUT, or --verify OUT")
    out = consolidate(args.ckpt, args.out, args.weights, args.schedule)
    meta = read_meta(out)
    src = meta["source"]
    print(
        f"wrote {out}/model.safetensors ({meta['weights']} weights, {meta['parameters']:,} parameters) and "
        f"met2net.json from {src['path']} ({meta['schedule']} step {meta['step']}, {src['engine']} "
        f"ZeRO-{src['zero_stage']} on {src['world_size']} rank(s))"
    )
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    from met2net.consolidate import import_reference

    explicit = {o.partition("=")[0].strip() for o in args.overrides}
    config = None
    if args.config or args.overrides:
        config = load_config(args.config, args.overrides)
        if args.config:
            explicit |= {f"model.{k}" for k in config.model.__dict__}
    report = import_reference(args.file, args.out, config, explicit, args.weights, args.trust_pickle, args.stats)
    print(report.describe())
    print(f"wrote {report.out}/model.safetensors and met2net.json; fine-tune with training.init_from={report.out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from met2net.launch.status import status

    print(status(args.run_dir))
    return 0


def _grid(text: str) -> tuple[int, int]:
    lat, _, lon = text.lower().partition("x")
    try:
        grid = int(lat), int(lon)
    except ValueError:
        grid = (0, 0)
    if min(grid) < 1:
        raise argparse.ArgumentTypeError(f"expected LATxLON with positive sizes, e.g. 32x64, got {text!r}")
    return grid


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    from met2net.data.netcdf import write_weatherbench_tree

    files = write_weatherbench_tree(args.out, args.years, grid=args.grid, seed=args.seed)
    lat, lon = args.grid
    print(f"wrote {len(files)} netCDF files for {len(args.years)} years at {lat}×{lon} under {args.out}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from met2net.data import stats
    from met2net.data.shards import read_index
    from met2net.distributed.mpi import world_comm

    years, period = args.train_years, None
    if args.train:  # a date range, as data.train: its years and, within them, its frames
        split = DataConfig(train=list(args.train))
        resolve_periods(split)
        years, period = split.train_years, split.period("train")
    comm = world_comm()
    moments = stats.compute_stats(args.shards, years, comm, period)
    if comm is None or comm.Get_rank() == 0:
        channels = [str(c) for c in read_index(args.shards)["channels"]]
        path = stats.write_stats(args.shards, moments, channels, years, args.train)
        print(stats.table(moments, channels))
        print(f"{int(moments.count[0])} values per channel; wrote {path}")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from met2net.data.convert import convert
    from met2net.distributed.mpi import world_comm
    from met2net.training.host_memory import keep_freed_memory

    cfg = load_config(args.config, args.overrides)
    comm = world_comm()
    keep_freed_memory(one_arena=True)  # each block reuses the last one's pages instead of faulting in fresh ones
    index = convert(args.src, cfg, args.out, comm=comm, force=args.force, hashes=args.hash)
    if comm is None or comm.Get_rank() == 0:
        print(f"shards and {index.name} in {args.out}")
    return 0


def cmd_plot_losses(args: argparse.Namespace) -> int:
    from met2net.evaluation.plots import find_metrics, plot_losses

    files = find_metrics(args.run_dirs)
    print(f"wrote {plot_losses(files, args.out)} from {len(files)} metrics.jsonl file(s)")
    return 0


def cmd_plot_scores(args: argparse.Namespace) -> int:
    from met2net.evaluation.plots import plot_scores

    written = plot_scores(args.metrics_csv, args.out, tuple(args.metric or ("rmse_w", "acc")))
    print(f"wrote {len(written)} plots to {args.out}")
    return 0


def cmd_scale_project(args: argparse.Namespace) -> int:
    from met2net.scaling.projection import Link, Network, Workload, markdown, project_all

    workload = Workload(args.compute_per_sample, args.parameters, args.bytes_per_element, tuple(args.passes_per_step))
    network = Network(
        Link(args.intra_gbs, args.intra_latency_us), Link(args.inter_gbs, args.inter_latency_us), args.gpus_per_node
    )
    rows = project_all(workload, network, args.batch_per_rank, args.world_sizes, args.zero, args.overlap, args.target)
    print(
        f"{args.parameters:,} parameters × {args.bytes_per_element} B, "
        f"{args.compute_per_sample * 1e3:g} ms per sample, "
        f"{args.batch_per_rank} per rank; {args.gpus_per_node} GPUs per node at {args.intra_gbs:g} GB/s, "
        f"{args.intra_latency_us:g} µs; between nodes {args.inter_gbs:g} GB/s, {args.inter_latency_us:g} µs; "
        f"overlap {args.overlap:g} (assumed); ring passes per step at ZeRO 0–3: "
        f"{' '.join(f'{p:g}' for p in args.passes_per_step)}\n"
    )
    print(markdown(rows, args.target))
    return 0


def cmd_scale_calibrate(args: argparse.Namespace) -> int:
    from met2net.scaling.calibration import calibrate, default_latency, describe, read_measured, validate

    if (args.points is None) == (args.sweep_results is None):
        raise UserError("give either a CSV of measured points or --from a sweep's results.csv, not both")
    if args.passes_from and args.sweep_results is None:
        raise UserError("--passes-from completes a sweep's rows: give it with --from")
    if args.sweep_results is not None:
        from met2net.scaling.calibration import from_rows, markdown, with_passes_of
        from met2net.scaling.report import latest_rows

        points = from_rows(latest_rows(args.sweep_results))
        if args.passes_from:
            points = with_passes_of(points, from_rows(latest_rows(args.passes_from)))
        if args.validate is None:  # every point held out once (leave-one-out), as the sweep's report does
            print(markdown(points, args.latency_us, args.per_stage))
            return 0
    else:
        points = read_measured(args.points)
    latency = default_latency(points, args.latency_us, args.per_stage)
    fit = calibrate(points, latency, args.per_stage)
    print(describe(fit, args.latency_us, latency))
    if args.validate:
        held = read_measured(args.validate)
        errors = validate(fit, held)
        for p, e in zip(held, errors):
            print(
                f"  {p.world_size} ranks, ZeRO {p.zero_stage}, {p.batch_per_rank} per rank: {p.step_s:.4g} s, {e:+.1%}"
            )
        print(f"held-out relative error: max {max(abs(e) for e in errors):.1%}")
    return 0


def cmd_scale_comm(args: argparse.Namespace) -> int:
    from met2net.scaling.comm import benchmark, is_rank0, table, write_csv

    timings = benchmark(args.sizes, args.iters, args.warmup)
    if timings is None:
        print("met2net scale comm: one process, nothing to measure; start it on ≥ 2 ranks (torchrun, srun, mpirun)")
        return 0
    if is_rank0():
        print(table(timings))
        if args.out:
            print(f"wrote {write_csv(timings, args.out)}")
    return 0


def cmd_scale_report(args: argparse.Namespace) -> int:
    from met2net.scaling.report import write_report

    text, parity_ok = write_report(args.out, args.tolerance, not args.no_plots, args.latency_us)
    print(text, end="")
    print(
        f"wrote {Path(args.out) / 'report.md'}"
        + ("" if args.no_plots else f" and plots in {Path(args.out) / 'plots'}")
        + ("" if parity_ok else "; first losses differ across ZeRO stages beyond the tolerance")
    )
    return 0 if parity_ok else 1


def cmd_scale_run(args: argparse.Namespace) -> int:
    from met2net.scaling.sweep import load_sweep
    from met2net.study.runner import describe, run_sweep

    sweep = load_sweep(args.sweep)
    out = Path(args.out or Path("runs/scaling") / Path(args.sweep).stem)
    print(describe(sweep, args.executor))
    if args.dry_run:
        print("dry run: nothing trained")
        return 0
    summary = run_sweep(sweep, out, args.executor, retry_failed=args.retry_failed)
    print(
        f"sweep: {len(summary.ran)} point(s) run ({len(summary.failed)} failed), {len(summary.skipped)} skipped; "
        f"results in {out / 'results.csv'}"
    )
    from met2net.scaling.report import read_results, write_report
    from met2net.scaling.results import recorded

    failed = [name for name, status in recorded(out).items() if status != "ok"]
    if failed:  # in this run or an earlier one: the sweep is not complete
        print(f"failed point(s): {', '.join(failed)} (errors in results.csv; --retry-failed runs them again)")
    try:
        read_results(out / "results.csv")
    except UserError as e:  # no point has trained yet: nothing to report
        print(f"no report: {e}")
        return 1
    _, parity_ok = write_report(out)
    print(f"wrote {out / 'report.md'} and plots in {out / 'plots'}")
    if not parity_ok:
        print("first losses differ across ZeRO stages beyond the tolerance (see the report)")
    return 0 if parity_ok and not failed else 1


def cmd_scale_point(args: argparse.Namespace) -> int:
    from met2net.study.point import run_point

    result = run_point(args.point)
    if result is not None:
        print(f"point done: {len(result['ranks'])} rank(s), result in {args.point}'s result file")
    return 0


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def _leads(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers separated by commas, e.g. 6,24") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="met2net", description=__doc__)
    # the deepspeed launcher passes --local_rank before the command; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config")
    _config_args(show)
    show.set_defaults(func=cmd_config_show)
    train = sub.add_parser("train", help="train one schedule (implicit, stage1, stage2, end_to_end)")
    _config_args(train)
    train.set_defaults(func=cmd_train)
    check = sub.add_parser(
        "check", help="preflight a run without training: config, launch, data, run dir, checkpoint, memory, plan"
    )
    _config_args(check)
    check.add_argument("--world-size", type=int, help="plan for this many ranks (default: the launcher's, else 1)")
    check.add_argument("--checksums", action="store_true", help="also check every shard against its sha256")
    check.add_argument("--no-step", action="store_true", help="leave out the timed synthetic forward/backward step")
    check.add_argument("--json", action="store_true", help="the checklist as JSON")
    check.set_defaults(func=cmd_check)
    submit = sub.add_parser("submit", help="submit stage one → stage two as dependent jobs (submitit: Slurm or local)")
    _config_args(submit)
    submit.add_argument("--stages", default="stage1,stage2", help="schedules in order (default stage1,stage2)")
    submit.add_argument(
        "--rounds",
        type=int,
        help="repeat the stages; round r starts from round r-1 "
        "(default: the config's training.rounds when staged, else 1)",
    )
    submit.add_argument(
        "--executor",
        choices=("slurm", "local"),
        default="slurm",
        help="local: run the jobs one after the other on this machine, without Slurm",
    )
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument("--tasks-per-node", type=int, default=1, help="ranks per node: one per GPU")
    submit.add_argument("--gpus-per-node", type=int, default=0)
    submit.add_argument(
        "--gpu-layout",
        choices=("node", "task"),
        default="node",
        help="node: every task sees its node's GPUs (cuda:<local rank>); task: srun --gpu-bind=single:1 gives each "
        "task one GPU (cuda:0)",
    )
    submit.add_argument("--cpus-per-task", type=int, default=1)
    submit.add_argument("--time", default="60", help="time limit per job: minutes, H:MM:SS or D-HH:MM:SS")
    submit.add_argument("--partition", default="")
    submit.add_argument("--account", default="")
    submit.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        help="seconds before the time limit at which training checkpoints and requeues",
    )
    submit.add_argument("--max-requeues", type=int, default=3, help="time-outs to checkpoint and requeue after")
    submit.add_argument("--dry-run", action="store_true", help="print the job plan, submit nothing")
    submit.set_defaults(func=cmd_submit)
    evaluate = sub.add_parser(
        "evaluate",
        help="forecast skill per variable and lead against persistence and "
        "climatology (torchrun/srun/mpirun: ranks split the samples)",
    )
    evaluate.add_argument("source", help="run directory, checkpoint directory or consolidated file")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument(
        "-o", "--out", default="evaluation", help="output directory (metrics.csv, metrics.json, report.md, plots/)"
    )
    evaluate.add_argument("--rollout", type=int, default=1, help="autoregressive steps: leads up to K × out_frames")
    evaluate.add_argument("--batch-size", type=int, default=0, help="windows per forward (default training.batch_size)")
    evaluate.add_argument("--climatology-window", type=int, default=15, help="days either side smoothed (default 15)")
    evaluate.add_argument("--no-plots", action="store_true")
    evaluate.add_argument(
        "--map-variables",
        type=_names,
        metavar="VAR,VAR",
        help="variables to map (truth, forecast, error of the first window; default all)",
    )
    evaluate.add_argument(
        "--map-leads",
        type=_leads,
        metavar="LEAD,LEAD",
        help="lead times to map, in hours (months for monthly data); default the first, middle and last",
    )
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.path=... data.test_years=[2018]")
    evaluate.set_defaults(func=cmd_evaluate)
    predict = sub.add_parser("predict", help="forecasts from chosen initial times → CF netCDF")
    predict.add_argument("source", help="run directory, checkpoint directory or consolidated file")
    predict.add_argument("--init", nargs="+", required=True, help="initial times (UTC), e.g. 2017-01-01T00")
    predict.add_argument("-o", "--out", required=True, help="netCDF file to write, e.g. forecast.nc")
    predict.add_argument("--rollout", type=int, default=1, help="autoregressive steps: leads up to K × out_frames")
    predict.add_argument("overrides", nargs="*", metavar="key=value")
    predict.set_defaults(func=cmd_predict)
    consolidate = sub.add_parser(
        "consolidate", help="a sharded checkpoint (any ZeRO stage, any world size) → model.safetensors + met2net.json"
    )
    consolidate.add_argument("ckpt", nargs="?", help="checkpoint (step_<n>), stage or run directory")
    consolidate.add_argument("-o", "--out", help="output directory")
    consolidate.add_argument(
        "--weights",
        choices=("inference", "all"),
        default="inference",
        help="inference: E_q, D_q, T_q and buffers; all: with the momentum copies (to restart training from)",
    )
    consolidate.add_argument("--schedule", help="which stage of a run directory (stage1, stage2, implicit, ...)")
    consolidate.add_argument("--verify", metavar="OUT", help="re-check a consolidated directory against met2net.json")
    consolidate.set_defaults(func=cmd_consolidate)
    imp = sub.add_parser("import-reference", help="the authors' reference checkpoint (.ckpt/.pth) → consolidated")
    imp.add_argument("file", help="reference checkpoint: a state dict, or a Lightning checkpoint (state_dict key)")
    imp.add_argument("-o", "--out", required=True, help="output directory")
    imp.add_argument("-c", "--config", help="YAML config: grid, heads, variable names (and model values to check)")
    imp.add_argument("--weights", choices=("inference", "all"), default="all", help="default all (with the copies)")
    imp.add_argument("--stats", help="stats.json (or its shard directory) of the normalisation the weights expect")
    imp.add_argument("--trust-pickle", action="store_true", help="allow a file that needs arbitrary unpickling")
    imp.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.grid=[64,128]")
    imp.set_defaults(func=cmd_import_reference)
    status = sub.add_parser("status", help="jobs (sacct), checkpoints and last metrics of a run directory")
    status.add_argument("run_dir", type=Path)
    status.set_defaults(func=cmd_status)
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    synthetic = data.add_parser("synthetic", help="write the built-in WeatherBench-style netCDF dataset")
    synthetic.add_argument("out", help="output directory (one folder per variable)")
    synthetic.add_argument(
        "--years", type=parse_years, default=parse_years("2010-2012"), help="e.g. 2010-2012 or 2010,2014"
    )
    synthetic.add_argument("--grid", type=_grid, default=(32, 64), help="LATxLON, e.g. 32x64 (5.625°)")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(func=cmd_data_synthetic)
    convert = data.add_parser("convert", help="netCDF (WeatherBench tree or CF files) → HDF5 shards")
    convert.add_argument("src", help="root of the netCDF files")
    convert.add_argument("-c", "--config", required=True, help="YAML config (model.variables, data.*)")
    convert.add_argument("-o", "--out", required=True, help="shard directory to write")
    convert.add_argument(
        "--force",
        action="store_true",
        help="replace shards converted from other sources or settings (built beside them, swapped in when complete)",
    )
    convert.add_argument(
        "--hash",
        action="store_true",
        help="record the sources' sha256 in index.json and compare contents, not sizes and times (reads them whole)",
    )
    convert.add_argument("overrides", nargs="*", metavar="key=value")
    convert.set_defaults(func=cmd_data_convert)
    stats = data.add_parser("stats", help="per-channel statistics of the training years → stats.json (mpirun/srun)")
    stats.add_argument("shards", type=Path, help="shard directory (holds index.json)")
    train = stats.add_mutually_exclusive_group(required=True)
    train.add_argument("--train-years", type=parse_years, help="e.g. 2010-2015 or 2010,2012 (data.train_years)")
    train.add_argument(
        "--train", nargs=2, metavar=("START", "END"), help="a date range, ends inclusive: 2005-07 2010-06 (data.train)"
    )
    stats.set_defaults(func=cmd_data_stats)
    plot = sub.add_parser("plot", help="PNG plots of training runs and evaluations").add_subparsers(
        dest="action", required=True
    )
    losses = plot.add_parser("losses", help="training and validation losses of runs (every round, every stage)")
    losses.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directory or metrics.jsonl")
    losses.add_argument("-o", "--out", type=Path, required=True, help="PNG file to write")
    losses.set_defaults(func=cmd_plot_losses)
    scores = plot.add_parser("scores", help="scores against lead time, with the baselines, from an evaluation CSV")
    scores.add_argument("metrics_csv", type=Path, help="the evaluation's long-format CSV")
    scores.add_argument("-o", "--out", type=Path, required=True, help="directory for <metric>_<variable>.png")
    scores.add_argument("--metric", action="append", help="metric to plot, repeatable (default: rmse_w and acc)")
    scores.set_defaults(func=cmd_plot_scores)
    from met2net.scaling.projection import DEFAULT_PASSES  # plain arithmetic: cheap to import

    scale = sub.add_parser(
        "scale", help="scaling studies: sweeps, reports, projection (docs/scaling.md)"
    ).add_subparsers(dest="action", required=True)
    proj = scale.add_parser("project", help="step time, samples/s and efficiency at 8 … 1024 GPUs, ZeRO 0–3")
    proj.add_argument("--compute-per-sample", type=float, required=True, help="seconds, forward+backward+optimizer")
    proj.add_argument("--batch-per-rank", type=int, required=True, help="samples per rank per optimizer step")
    proj.add_argument("--parameters", type=int, required=True, help="trained parameters")
    proj.add_argument("--bytes-per-element", type=int, default=4, help="communicated bytes per parameter (default 4)")
    proj.add_argument("--gpus-per-node", type=int, default=8)
    proj.add_argument("--intra-gbs", type=float, default=150.0, help="GB/s within a node (default 150)")
    proj.add_argument("--intra-latency-us", type=float, default=2.0)
    proj.add_argument("--inter-gbs", type=float, default=25.0, help="a ring's bus GB/s between nodes (default 25)")
    proj.add_argument("--inter-latency-us", type=float, default=5.0)
    proj.add_argument("--overlap", type=float, default=0.0, help="fraction of communication hidden behind backward")
    proj.add_argument("--target", type=float, default=0.9, help="efficiency the global batch column reaches")
    proj.add_argument("--zero", type=int, nargs="+", default=[0, 1, 2, 3], help="ZeRO stages (default 0 1 2 3)")
    proj.add_argument(
        "--passes-per-step",
        type=float,
        nargs=4,
        default=list(DEFAULT_PASSES),
        metavar=("Z0", "Z1", "Z2", "Z3"),
        help="ring passes (collective calls, an all-reduce 2) per step at ZeRO 0–3 (default 2 2 2 3: one call a pass)",
    )
    proj.add_argument(
        "--world-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512, 1024], help="GPUs (8 … 1024)"
    )
    proj.set_defaults(func=cmd_scale_project)
    cal = scale.add_parser("calibrate", help="fit compute per sample, bandwidth and latency to measured steps")
    cal.add_argument(
        "points", nargs="?", help="CSV: world_size, zero_stage, batch_per_rank, parameters, bytes_per_element, step_s"
    )
    cal.add_argument(
        "--from",
        dest="sweep_results",
        metavar="RESULTS_CSV",
        help="a sweep's results.csv instead: fit all its points, each held out once (or --validate CSV)",
    )
    cal.add_argument("--validate", metavar="CSV", help="held-out points: the fit's relative error on each")
    cal.add_argument(
        "--latency-us", type=float, help="fix the latency (needed when ring steps are proportional to the bytes)"
    )
    cal.add_argument("--per-stage", action="store_true", help="fit a compute time per sample per ZeRO stage")
    cal.add_argument(
        "--passes-from",
        metavar="RESULTS_CSV",
        help="with --from: ring passes per step measured in this sweep of the same model, for rows without their own",
    )
    cal.set_defaults(func=cmd_scale_calibrate)
    comm = scale.add_parser(
        "comm", help="time all-reduce, all-gather, reduce-scatter on this job's ranks (torchrun/srun/mpirun)"
    )
    comm.add_argument(
        "--sizes", type=int, nargs="+", default=[4096, 65536, 1048576, 16777216], help="buffer bytes (nccl-tests')"
    )
    comm.add_argument("--iters", type=int, default=20, help="timed iterations per op and size (median reported)")
    comm.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    comm.add_argument("-o", "--out", help="CSV file to write (rank 0)")
    comm.set_defaults(func=cmd_scale_comm)
    rep = scale.add_parser("report", help="a sweep's OUT/results.csv → OUT/report.md (exit 1 when parity fails)")
    rep.add_argument("out", help="sweep directory holding results.csv")
    rep.add_argument("--tolerance", type=float, default=1e-4, help="relative, first losses across ZeRO stages")
    rep.add_argument("--no-plots", action="store_true", help="the tables only")
    rep.add_argument(
        "--latency-us", type=float, help="the calibration's latency per ring step (default: fitted where it can be)"
    )
    rep.set_defaults(func=cmd_scale_report)
    run = scale.add_parser(
        "run", help="train every point of a sweep file, one row each in OUT/results.csv, then the report"
    )
    run.add_argument("sweep", help="sweep YAML: base config, axes, warm-up and timed steps (docs/scaling.md)")
    run.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: torchrun on this machine; slurm: one submitit job per point",
    )
    run.add_argument("-o", "--out", help="sweep directory (default runs/scaling/<sweep file name>)")
    run.add_argument("--retry-failed", action="store_true", help="run points whose last row failed again")
    run.add_argument("--dry-run", action="store_true", help="list the points, train nothing")
    run.set_defaults(func=cmd_scale_run)
    point = scale.add_parser("point", help="one sweep point on this job's ranks (what scale run starts)")
    point.add_argument("point", help="the point's point.json, written by scale run")
    point.set_defaults(func=cmd_scale_point)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`-o OUT k=v`), which argparse leaves over
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise  # a bug in met2net: its traceback is what a report needs
        print(f"met2net: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
