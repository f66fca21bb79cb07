"""FLOPs of one optimizer step of each schedule, per sample: what "equal compute" between schedules means when
their steps differ (docs/results.md, "At equal FLOPs"). torch's FlopCounterMode (met2net.model.flops.flop_counter,
which corrects its count of grouped convolutions' weight gradients) around one forward and backward on random input.

    .venv/bin/python tools/schedule_flops.py [configs/quickstart.yaml] [--implicit-steps N [--rounds R] [--split 1:2]]
        [key=value ...]

With ``--implicit-steps N`` it also prints the ``training.stage_steps`` that give the staged pipeline (``--rounds``
rounds, default the config's ``training.rounds``; stages ``--split``, default the config's ``stage_steps`` ratio, else
1:2) the FLOPs of N implicit steps.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from met2net.config import Config, load_config
from met2net.model.flops import flop_counter
from met2net.model.met2net import Met2Net
from met2net.training.stages import Schedule, make_schedule


def schedule_and_model(
    config: str, schedule: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Config, Schedule, Met2Net]:
    """The config with ``overrides`` and ``schedule`` (None: its own; drop_path off: the same work, no random draws),
    the schedule and a model configured for it (also tools/count_module_runs.py)."""
    chosen = [] if schedule is None else [f"training.schedule={schedule}"]
    cfg = load_config(config, [*overrides, *chosen, "model.drop_path=0"])
    torch.manual_seed(0)
    steps = make_schedule(cfg)
    model = Met2Net(cfg.model, with_copies=steps.needs_copies)
    steps.configure(model)
    return cfg, steps, model


def random_batch(cfg: Config, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An input and a target of ``batch`` samples in the model's shape."""
    m = cfg.model
    x = torch.randn(batch, m.in_frames, len(m.variables), *m.grid)
    return x, torch.randn(batch, m.out_frames, len(m.variables), *m.grid)


def step_gflop_per_sample(config: str, schedule: str, overrides: Sequence[str] = ()) -> float:
    """One step of ``schedule`` at the config's batch, in GFLOP per sample (also tools/staged_study.py's report)."""
    cfg, steps, model = schedule_and_model(config, schedule, overrides)
    b = cfg.training.batch_size
    with flop_counter() as counter:
        steps.forward(model, *random_batch(cfg, b)).loss.backward()
    return counter.get_total_flops() / b / 1e9


def main() -> None:
    import staged_study  # tools/, beside this script; it imports this module

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    parser.add_argument("--implicit-steps", type=int, help="print the stage_steps worth this many implicit steps")
    parser.add_argument("--rounds", type=int, help="rounds of the pipeline (default: the config's training.rounds)")
    parser.add_argument("--split", type=staged_study.parse_split, help="stage one : stage two steps, e.g. 1:2")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args()
    names = ("implicit", "stage1", "stage2", "end_to_end")
    gflop = {name: step_gflop_per_sample(args.config, name, args.overrides) for name in names}
    for name, value in gflop.items():
        print(f"{name}: {value:.3f} GFLOP per sample per step")
    if args.implicit_steps:
        training = load_config(args.config, args.overrides).training
        stage_steps, rounds = training.stage_steps, args.rounds or training.rounds
        split = args.split or (staged_study.config_split(stage_steps) if stage_steps else (1, 2))
        steps = staged_study.stage_steps_at_equal_flops(args.implicit_steps, rounds, split, gflop)
        print(
            f"stage_steps: {{stage1: {steps['stage1']}, stage2: {steps['stage2']}}} ({rounds} rounds, "
            f"{split[0]}:{split[1]}: the FLOPs of {args.implicit_steps} implicit steps)"
        )


if __name__ == "__main__":
    main()
