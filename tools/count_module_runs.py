"""Modules with parameters that one training forward of a config's schedule runs: what ZeRO 3 gathers (once in
forward, again in backward), the count behind a predicted ``--passes-per-step`` (docs/scaling.md).

    python tools/count_module_runs.py configs/quickstart.yaml
"""

from __future__ import annotations

import sys

import torch
from schedule_flops import random_batch, schedule_and_model  # tools/, beside this script


def count_runs(config_path: str) -> dict[str, int]:
    """Forward hooks on every module holding parameters, one forward of the schedule on a batch of one sample."""
    cfg, schedule, model = schedule_and_model(config_path)
    counts = {"modules_with_parameters": 0, "runs": 0, "runs_of_trained": 0, "parameter_tensors": 0}
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        counts["modules_with_parameters"] += 1
        counts["parameter_tensors"] += len(own)
        trained = any(p.requires_grad for p in own)

        def hook(_module: torch.nn.Module, _inputs: object, _output: object, trained: bool = trained) -> None:
            counts["runs"] += 1
            counts["runs_of_trained"] += trained

        module.register_forward_hook(hook)
    schedule.forward(model, *random_batch(cfg, 1))
    return counts


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(path, count_runs(path))
