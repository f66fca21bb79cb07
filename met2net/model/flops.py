"""The work of Met²Net's convolutions and matrix products, counted from the config alone: the multiply-accumulates
(MACs; FLOPs = 2 × MACs) that the implicit training step cannot avoid, the yardstick against which
``tools/bench/step.py`` measures how close a step comes to the machine's matrix-product peak.

Per sample, one frame of one variable through an encoder or a decoder, and one variable's latent through the
Translator (its 1×1 and depthwise convolutions, and the cross-variable attention's two batched products):

- encoder: 3×3 convolutions on the padded grid, stride 2 where they downsample (``encoder.layer_strides``);
- decoder: the mirrored 3×3 convolutions (×4 channels where they upsample, before the pixel shuffle), then a 1×1
  readout;
- Translator block (D = hid_t on the h×w latent grid, C variables): q, k, v, out, proj_in, lka_pw, proj_out (7 D×D),
  mlp_in, mlp_out (2 D×4D), depthwise 5×5, dilated 7×7 and 3×3 (on 4D), and scores (q kᵀ, scores v: 2·C·D each).

The implicit step (codec momentum 0, no prediction term: the paper's settings) needs: E_q(x) and E_q(y) forward;
T_k forward and its backward to its input (E_q's gradient passes through it; the attention products need both
operands' gradients, twice their forward); D_q forward and backward (weights and input); T_q forward and backward
(weights; inputs except the latent it reads, which is detached: no gradient to conv_in's input); E_q's backward
(weights; inputs except the data's). That is five Translator passes, plus the attention products once more, less
conv_in's input gradient, plus the codecs. ``tests/unit/test_flops.py`` checks the count
against torch's FlopCounterMode on the plain-kernel step (``flop_counter``: torch's, with grouped convolutions'
weight gradients counted right).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

from met2net.config import ModelConfig
from met2net.model.encoder import downsampling, layer_strides
from met2net.model.grid import padded_grid

MLP_RATIO = 4  # TAUBlock's hidden width
DEPTHWISE_TAPS = 5 * 5 + 7 * 7  # lka_dw and lka_dilated, per channel (mlp_dw: 3×3 on MLP_RATIO channels)


def encoder_macs(m: ModelConfig) -> tuple[int, int]:
    """MACs of one frame of one variable through an encoder: (all layers, the first layer alone)."""
    h, w = padded_grid(m.grid, downsampling(m.num_spatial_layers))
    total, first = 0, 0
    for i, stride in enumerate(layer_strides(m.num_spatial_layers)):
        if stride:
            h, w = h // 2, w // 2
        layer = 9 * (1 if i == 0 else m.hid_s) * m.hid_s * h * w
        total, first = total + layer, first or layer
    return total, first


def decoder_macs(m: ModelConfig) -> int:
    """MACs of one frame of one variable through a decoder (it ends on the padded grid, then crops)."""
    h, w = m.latent_grid
    total = 0
    for upsample in reversed(layer_strides(m.num_spatial_layers)):
        total += 9 * m.hid_s * m.hid_s * (4 if upsample else 1) * h * w
        if upsample:
            h, w = 2 * h, 2 * w
    return total + m.hid_s * h * w  # the 1×1 readout


def translator_macs(m: ModelConfig) -> dict[str, int]:
    """MACs of one sample's latents (all variables) through the Translator, by kind: ``conv_in``, ``attention``
    (the two batched products of every block), ``rest`` (every other convolution)."""
    c, d = len(m.variables), m.hid_t
    tokens = c * m.latent_grid[0] * m.latent_grid[1]  # (variable, latent pixel) pairs
    per_block = (7 + 2 * MLP_RATIO) * d * d + (DEPTHWISE_TAPS + 9 * MLP_RATIO) * d
    conv = m.in_frames * m.hid_s * d
    return {
        "conv_in": tokens * conv,
        "attention": tokens * m.num_translator_blocks * 2 * c * d,
        "rest": tokens * (m.num_translator_blocks * per_block + conv),
    }


def implicit_step_macs(m: ModelConfig) -> dict[str, int]:
    """MACs per sample of the implicit step's necessary work, by module (see the module's docstring)."""
    frames = m.in_frames * len(m.variables)
    enc, first = encoder_macs(m)
    t = translator_macs(m)
    forward = sum(t.values())
    return {
        "translator": 5 * forward + t["attention"] - t["conv_in"],
        "encoders": frames * (2 * enc + enc + enc - first),  # x and y forward; weights; inputs except the data's
        "decoders": frames * 3 * decoder_macs(m),
    }


def implicit_step_flops(m: ModelConfig) -> int:
    """FLOPs (2 per multiply-accumulate) per sample of the implicit step's necessary work."""
    return 2 * sum(implicit_step_macs(m).values())


def _convolution_backward(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: list[bool],
    **_: Any,
) -> int:
    """A convolution's gradients each cost its forward's multiply-accumulates (one product per product of the
    forward). torch's formula ignores ``groups`` in the weight gradient: a depthwise convolution's counted C times."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode (FLOPs of matrix products and convolutions, forward and backward; nothing else), with
    the weight gradients of grouped convolutions counted right, and the CPU's fused attention (which torch counts on
    GPUs only) counted as the GPUs' is."""
    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten.convolution_backward: _convolution_backward,
            aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *_, **__: (
                sdpa_backward_flop_count(g, q, k, v)
            ),
        },
    )
