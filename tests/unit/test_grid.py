"""Any regular lat/lon grid: the model pads to the encoder's multiple and crops back (met2net/model/grid.py)."""

import pytest
import torch

from met2net.config import load_config
from met2net.model.grid import crop_from_multiple, pad_amounts, pad_to_multiple
from met2net.model.met2net import Met2Net
from met2net.training.stages import make_schedule
from tests.conftest import small_config


def numbered(h: int, w: int) -> torch.Tensor:
    """(1, 1, h, w) whose value at (i, j) is 1000·i + j: every cell says where it came from."""
    return (torch.arange(h)[:, None] * 1000 + torch.arange(w)[None, :]).float()[None, None]


def test_padding_is_circular_in_longitude_and_replicates_latitude():
    x = numbered(33, 34)
    p = pad_to_multiple(x, 4)
    assert p.shape == (1, 1, 36, 36)
    assert pad_amounts((33, 34), 4) == (1, 2, 2)  # rows above, rows below, columns east
    inner = p[..., 1:34, :34]
    assert torch.equal(inner, x)
    assert torch.equal(p[..., 1:34, 34:], x[..., :, :2])  # east of the last longitude: the first ones again
    assert torch.equal(p[..., 0, :34], x[..., 0, :])  # the southern edge row repeated
    assert torch.equal(p[..., 34:, :34], x[..., -1:, :].expand(-1, -1, 2, -1))  # the northern edge row, twice
    assert torch.equal(crop_from_multiple(p, (33, 34)), x)


def test_a_grid_that_is_a_multiple_is_not_touched():
    x = numbered(32, 64)
    assert pad_amounts((32, 64), 2) == (0, 0, 0)
    assert pad_to_multiple(x, 2) is x and crop_from_multiple(x, (32, 64)) is x


def test_latent_grid_is_the_padded_one():
    assert load_config(None, ["model.grid=[73,144]"]).model.latent_grid == (37, 72)
    assert load_config(None, ["model.grid=[30,64]", "model.num_spatial_layers=4"]).model.latent_grid == (8, 16)
    assert load_config(None, ["model.grid=[721,1440]", "model.num_spatial_layers=4"]).model.latent_grid == (181, 360)
    assert load_config(None).model.latent_grid == (16, 32)


@pytest.mark.parametrize("grid, layers", [((73, 144), 2), ((33, 36), 2), ((33, 36), 4), ((32, 64), 2)])
def test_any_grid_trains_a_step_and_forecasts_on_its_own_grid(grid, layers):
    cfg = small_config(f"model.grid=[{grid[0]},{grid[1]}]", f"model.num_spatial_layers={layers}", "model.drop_path=0")
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model)
    schedule.configure(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(2, 2, 3, *grid), torch.randn(2, 2, 3, *grid)
    z = Met2Net.encode(model.encoders_q, x)
    assert z.shape[-2:] == cfg.model.latent_grid
    out = schedule.forward(model, x, y)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    schedule.after_backward(model)
    opt.step()
    assert model.predict(x).shape == x.shape == (2, 2, 3, *grid)


@pytest.mark.parametrize("grid, layers", [((181, 360), 2), ((721, 1440), 4)])
def test_reanalysis_grids_build_and_run_a_forward(grid, layers):
    cfg = load_config(
        None,
        [
            f"model.grid=[{grid[0]},{grid[1]}]",
            f"model.num_spatial_layers={layers}",
            "model.in_frames=1",
            "model.out_frames=1",
            "model.hid_s=2",
            "model.hid_t=8",
            "model.num_heads=2",
            "model.num_translator_blocks=1",
        ],
    )
    model = Met2Net(cfg.model, with_copies=False)
    x = torch.randn(1, 1, 5, *grid)
    assert model.predict(x).shape == x.shape
