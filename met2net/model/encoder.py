"""Per-variable spatial encoder and decoder (MODEL.md §1).

Shapes: N = batch·frames, S = hid_s, H×W the grid, h×w the latent grid.
Each variable has its own Encoder/Decoder; they see one channel, frame by frame. A grid that is not a multiple of
the downsampling factor is padded by the Encoder and cropped back by the Decoder (met2net/model/grid.py).
"""

from __future__ import annotations

import torch
from torch import nn

from met2net.model.grid import crop_from_multiple, pad_to_multiple, padded_grid


def layer_strides(num_layers: int) -> list[bool]:
    """Which encoder layers downsample: [False, True, False, True, ...] (the reference's
    ``sampling_generator``); the decoder upsamples in the reverse order."""
    return [i % 2 == 1 for i in range(num_layers)]


class ConvSC(nn.Module):
    """Conv 3×3 (stride 2 when downsampling, ×4 channels + PixelShuffle(2) when
    upsampling) → GroupNorm(2) → SiLU."""

    def __init__(self, c_in: int, c_out: int, downsample: bool = False, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        stride = 2 if downsample else 1
        padding = (3 - stride + 1) // 2
        self.conv = nn.Conv2d(c_in, c_out * 4 if upsample else c_out, 3, stride, padding)
        self.norm = nn.GroupNorm(2, c_out)
        self.act = nn.SiLU()
        nn.init.trunc_normal_(self.conv.weight, std=0.02)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.upsample:
            y = nn.functional.pixel_shuffle(y, 2)
        return self.act(self.norm(y))


def downsampling(num_layers: int) -> int:
    """How many grid cells one latent cell covers along each axis: 2 per downsampling layer."""
    return 2 ** sum(layer_strides(num_layers))


class Encoder(nn.Module):
    """(N, 1, H, W) → (N, S, h, w), h = ⌈H / factor⌉, w = ⌈W / factor⌉ (the input padded to a multiple first)."""

    def __init__(self, hid_s: int, num_layers: int):
        super().__init__()
        strides = layer_strides(num_layers)
        self.factor = downsampling(num_layers)
        self.layers = nn.Sequential(
            *[ConvSC(1 if i == 0 else hid_s, hid_s, downsample=s) for i, s in enumerate(strides)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(pad_to_multiple(x, self.factor))


class Decoder(nn.Module):
    """(N, S, h, w) → (N, 1, H, W): mirrored ConvSC layers, then a 1×1 readout; cropped to ``grid`` when the
    Encoder had to pad it (``grid`` None or a multiple: the output is the latent grid × factor, as the reference)."""

    def __init__(self, hid_s: int, num_layers: int, grid: tuple[int, int] | None = None):
        super().__init__()
        ups = list(reversed(layer_strides(num_layers)))
        self.layers = nn.Sequential(*[ConvSC(hid_s, hid_s, upsample=u) for u in ups])
        self.readout = nn.Conv2d(hid_s, 1, 1)  # PyTorch default init, as the reference
        factor = downsampling(num_layers)
        padded = None if grid is None else padded_grid(grid, factor)
        self.grid = None if padded is None or padded == tuple(grid) else (tuple(grid), padded)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.readout(self.layers(z))
        if self.grid is None:
            return y
        grid, padded = self.grid
        if tuple(y.shape[-2:]) != padded:
            raise ValueError(
                f"decoder for the {grid[0]}×{grid[1]} grid got latents that decode to {tuple(y.shape[-2:])}, "
                f"expected the padded {padded[0]}×{padded[1]}"
            )
        return crop_from_multiple(y, grid)
