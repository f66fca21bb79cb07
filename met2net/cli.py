"""`met2net <command>`: a thin layer that parses arguments and calls the package."""

from __future__ import annotations

import argparse
import sys

from met2net.config import ConfigError, load_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. training.lr=3e-4")


def cmd_config_show(args: argparse.Namespace) -> int:
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from met2net.training.loop import build_trainer

    cfg = load_config(args.config, args.overrides)
    trainer = build_trainer(cfg)
    val = trainer.train()
    print(f"{trainer.schedule.name}: {trainer.step} steps, validation "
          + ", ".join(f"{k} {v:.5f}" for k, v in val.items()) + f"; run directory {trainer.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="met2net", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config")
    _config_args(show)
    show.set_defaults(func=cmd_config_show)
    train = sub.add_parser("train", help="train one schedule (implicit, stage1, stage2, end_to_end)")
    _config_args(train)
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"met2net: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
