"""The analytic count of the implicit step's necessary work (met2net/model/flops.py) is what torch's FlopCounterMode
counts over the step itself, forward and backward, with the plain kernels (the fast dilated convolution computes on
a grid padded to a multiple of its dilation: a little more). torch's own count of a grouped convolution's weight
gradient is corrected (``flops.flop_counter``)."""

from __future__ import annotations

import pytest
import torch

from met2net.model.flops import flop_counter, implicit_step_flops, implicit_step_macs
from met2net.model.met2net import Met2Net
from met2net.training.stages import make_schedule
from tests.conftest import small_config


def counted_flops(cfg, batch: int, fast_kernels: bool) -> int:
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model).use_fast_kernels(fast_kernels)
    schedule.configure(model)
    x = torch.randn(batch, cfg.model.in_frames, len(cfg.model.variables), *cfg.model.grid)
    y = torch.randn(x.shape)
    with flop_counter() as counter:
        schedule.forward(model, x, y).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.grid=[9,19]", "model.num_spatial_layers=4"],  # padded grid, two downsamplings
        ["model.in_frames=3", "model.out_frames=3", "model.num_translator_blocks=1", "model.hid_s=6"],
    ],
)
def test_the_analytic_count_is_what_the_step_computes(overrides):
    cfg = small_config("model.drop_path=0", *overrides)
    assert counted_flops(cfg, batch=2, fast_kernels=False) == 2 * implicit_step_flops(cfg.model)
    assert counted_flops(cfg, batch=1, fast_kernels=True) >= implicit_step_flops(cfg.model)


def test_the_paper_model_needs_five_translator_passes_and_the_codecs():
    """mv5 5.625°: ~20.7 G multiply-accumulates per Translator pass (the depthwise convolutions add 0.6 G), and
    the codecs ~8 G, per sample."""
    from met2net.config import load_config
    from tests.e2e.test_train_cli import ROOT

    macs = implicit_step_macs(load_config(ROOT / "configs/mv5_5.625.yaml").model)
    assert macs["translator"] == pytest.approx(5 * 21.27e9, rel=0.01)
    assert macs["encoders"] + macs["decoders"] == pytest.approx(8.05e9, rel=0.01)
