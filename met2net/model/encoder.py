"""Per-variable spatial encoder and decoder (MODEL.md §1).

Shapes: N = batch·frames, S = hid_s, H×W the grid, h×w the latent grid.
Each variable has its own Encoder/Decoder; they see one channel, frame by frame.
"""

from __future__ import annotations

import torch
from torch import nn


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


class Encoder(nn.Module):
    """(N, 1, H, W) → (N, S, h, w)."""

    def __init__(self, hid_s: int, num_layers: int):
        super().__init__()
        strides = layer_strides(num_layers)
        self.layers = nn.Sequential(
            *[ConvSC(1 if i == 0 else hid_s, hid_s, downsample=s) for i, s in enumerate(strides)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """(N, S, h, w) → (N, 1, H, W): mirrored ConvSC layers, then a 1×1 readout."""

    def __init__(self, hid_s: int, num_layers: int):
        super().__init__()
        ups = list(reversed(layer_strides(num_layers)))
        self.layers = nn.Sequential(*[ConvSC(hid_s, hid_s, upsample=u) for u in ups])
        self.readout = nn.Conv2d(hid_s, 1, 1)  # PyTorch default init, as the reference

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.readout(self.layers(z))
