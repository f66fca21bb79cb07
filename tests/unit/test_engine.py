import json

import pytest

from met2net.config import ConfigError, load_config
from met2net.training.engine import deepspeed_config, micro_batch_size, write_deepspeed_config


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("world, accumulation", [(1, 1), (2, 1), (4, 2), (16, 1)])
def test_batch_arithmetic_for_every_stage(stage, world, accumulation):
    cfg = load_config(
        None,
        [f"deepspeed.zero_stage={stage}", f"deepspeed.gradient_accumulation={accumulation}", "training.batch_size=32"],
    )
    conf = deepspeed_config(cfg, world)
    micro = conf["train_micro_batch_size_per_gpu"]
    assert conf["train_batch_size"] == 32 == micro * accumulation * world
    assert conf["gradient_accumulation_steps"] == accumulation
    assert conf["zero_optimization"]["stage"] == stage
    assert ("stage3_param_persistence_threshold" in conf["zero_optimization"]) == (stage == 3)
    assert conf["gradient_clipping"] == 0.0  # explicit: DeepSpeed would otherwise clip at 1.0


def test_indivisible_batch_names_key_and_fix():
    cfg = load_config(None, ["training.batch_size=16", "deepspeed.gradient_accumulation=2"])
    assert micro_batch_size(cfg, 4) == 2
    with pytest.raises(ConfigError, match=r"'training.batch_size' 16 .* \(2\) × ranks \(3\) = 6; use a multiple of 6"):
        micro_batch_size(cfg, 3)
    with pytest.raises(ConfigError, match="not divisible by deepspeed.gradient_accumulation=3"):
        load_config(None, ["training.batch_size=16", "deepspeed.gradient_accumulation=3"])


def test_precision_and_clipping_flow_through(tmp_path):
    cfg = load_config(
        None,
        [
            "training.precision=bf16",
            "training.grad_clip=0.5",
            "deepspeed.zero_stage=3",
            "deepspeed.stage3_param_persistence_threshold=0",
        ],
    )
    conf = deepspeed_config(cfg, 2)
    assert not conf["bf16"]["enabled"] and conf["gradient_clipping"] == 0.5  # bf16 = autocast, fp32 engine
    assert conf["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    path = write_deepspeed_config(tmp_path, conf)
    assert json.loads(path.read_text()) == conf


def test_zero_stage_is_validated():
    with pytest.raises(ConfigError, match="'deepspeed.zero_stage' must be 0, 1, 2 or 3, got 4"):
        load_config(None, ["deepspeed.zero_stage=4"])


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_zero_computes_the_gradient_norm_only_to_clip(stage, clip):
    """ZeRO 1/2 would read the global gradient norm on the host every step only to skip non-finite steps; without
    clipping they skip computing it (tests/unit/test_hot_path.py: no read per step)."""
    cfg = load_config(None, [f"deepspeed.zero_stage={stage}", f"training.grad_clip={clip}"])
    zero = deepspeed_config(cfg, 2)["zero_optimization"]
    assert zero.get("compute_grad_norm", True) == (stage in (0, 3) or clip > 0)
