"""Any regular lat/lon grid through an encoder that halves it: pad to the next multiple, crop back after decoding.

The encoder downsamples by ``factor`` = 2^(num_spatial_layers // 2) and the decoder upsamples by it, so only grids
that are multiples of it come back at their own size. Other grids (73×144 at 2.5°, 181×360 at 1°, 721×1440 at
0.25°) are padded to the next multiple before the encoders and cropped to the user's grid after the decoders: inputs,
outputs, losses and forecasts stay on the user's grid; the latents live on the padded grid / factor.

* **Longitude: circular.** The columns added east of the last longitude are the first longitudes again, their true
  neighbours on a global grid, so the convolutions see one continuous field across the seam.
* **Latitude: replicate**, split between the southern edge (``pad // 2`` rows) and the northern edge (the rest).
  Reflection would be the right neighbour only for a grid whose edge row is a pole (and then at longitude + 180°); a
  grid whose rows stop half a cell short of the pole, or a regional one, has no such neighbour. Repeating the edge
  row assumes nothing about where the grid ends, works for any pad size (reflect needs more rows than the pad), and
  the added rows are cropped from every output, so they never enter a loss or a score.

A grid that already is a multiple is not touched (the very tensor is returned), so the model at the paper's grids
is exactly the authors' reference.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def pad_amounts(grid: tuple[int, int] | list[int], factor: int) -> tuple[int, int, int]:
    """(rows added south, rows added north, columns added east) that make ``grid`` a multiple of ``factor``."""
    lat, lon = grid
    rows = -lat % factor
    return rows // 2, rows - rows // 2, -lon % factor


def padded_grid(grid: tuple[int, int] | list[int], factor: int) -> tuple[int, int]:
    """The grid the encoders see: each size rounded up to a multiple of ``factor``."""
    south, north, east = pad_amounts(grid, factor)
    return grid[0] + south + north, grid[1] + east


def pad_to_multiple(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., H, W) → (..., H', W'), multiples of ``factor``: circular in longitude, replicated in latitude."""
    south, north, east = pad_amounts(tuple(x.shape[-2:]), factor)
    if east:
        x = torch.cat([x, x[..., :east]], dim=-1)
    if south or north:
        flat = x.reshape(-1, 1, *x.shape[-2:])  # F.pad's replicate mode wants (N, C, H, W)
        x = F.pad(flat, (0, 0, south, north), mode="replicate").reshape(*x.shape[:-2], -1, x.shape[-1])
    return x


def crop_from_multiple(y: torch.Tensor, grid: tuple[int, int] | list[int]) -> torch.Tensor:
    """(..., H', W') on the padded grid → (..., H, W) on ``grid``: drops what :func:`pad_to_multiple` added."""
    lat, lon = grid
    if tuple(y.shape[-2:]) == (lat, lon):
        return y
    south = (y.shape[-2] - lat) // 2
    return y[..., south : south + lat, :lon]
