import math

import pytest
import torch

from met2net.config import load_config
from met2net.training.optim import build_lr_scheduler, build_optimizer, lr_at, optimizer_kernels
from tests.conftest import small_config


def test_warmup_then_cosine_to_min():
    assert lr_at(0, 1.0, 0.1, 4, 20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 0.1, 4, 20) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 0.1, 4, 20) == pytest.approx(1.0)
    assert lr_at(12, 1.0, 0.1, 4, 20) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert lr_at(20, 1.0, 0.1, 4, 20) == pytest.approx(0.1)
    assert lr_at(25, 1.0, 0.1, 4, 20) == pytest.approx(0.1)  # past the end: stays at min
    values = [lr_at(s, 1.0, 0.0, 0, 10) for s in range(11)]
    assert values == sorted(values, reverse=True) and values[0] == 1.0


def test_scheduler_steps_per_optimizer_step():
    cfg = load_config(
        None,
        [
            "training.lr=0.5",
            "training.min_lr=0.05",
            "training.warmup_steps=2",
            "training.optimizer=adamw",
            "training.weight_decay=0.1",
        ],
    )
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], cfg.training)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.1
    sched = build_lr_scheduler(opt, cfg.training, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, 0.5, 0.05, 2, 10) for s in range(10)])


def test_foreach_adam_gives_the_plain_loop_numbers_bitwise():
    """The CPU's optimizer kernel (foreach) against torch's per-tensor loop, over a few implicit steps of the model."""
    from met2net.model.met2net import Met2Net
    from met2net.training.stages import make_schedule

    cfg = small_config("model.drop_path=0", "training.lr=0.01")
    assert optimizer_kernels("cpu") == {"foreach": True} and optimizer_kernels("cuda:0") == {"fused": True}
    weights = Met2Net(cfg.model).state_dict()
    trained = []
    for foreach in (False, True):
        model, schedule = Met2Net(cfg.model), make_schedule(cfg)
        model.load_state_dict(weights)
        schedule.configure(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = build_optimizer(trainable, cfg.training) if foreach else torch.optim.Adam(trainable, 0.01, foreach=False)
        assert opt.defaults["foreach"] is foreach
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(2, 2, 3, 8, 16, generator=g), torch.randn(2, 2, 3, 8, 16, generator=g)
            schedule.forward(model, x, y).loss.backward()
            schedule.after_backward(model)
            opt.step()
            opt.zero_grad()
        trained.append(model.state_dict())
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in weights)
    assert any(not torch.equal(weights[k], trained[1][k]) for k in weights)
