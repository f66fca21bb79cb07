"""Cross-variable self-attention Translator (MODEL.md §2).

Shapes: B batch, C variables (the attention tokens), D = hid_t, h×w latent grid,
T·S = frames × hid_s (the translator's input channels per variable).
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's DropPath, scale by keep), drawn from the global
    RNG in the same order as the reference so seeded runs can be compared."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class PhaseDilatedConv2d(nn.Conv2d):
    """A same-padded dilated depthwise convolution computed as an undilated one on the d×d phase sub-grids of
    its input (pixel (i, j) belongs to phase (i mod d, j mod d)), when ``fast_kernels`` is on.

    Equal to the plain convolution up to float rounding, and several times faster on CPU: oneDNN's dilated
    depthwise kernels, their backward above all, are slow. A module (not a function of the weights) so that
    ZeRO-3 gathers its parameters when it runs.
    """

    fast_kernels = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast_kernels:
            return super().forward(x)
        d = self.dilation[0]
        n, c, h, w = x.shape
        hp, wp = -(-h // d) * d, -(-w // d) * d
        x = F.pad(x, (0, wp - w, 0, hp - h))
        # Pixels as (row, row phase, column, column phase), channels last: one copy gathers the phases, one copy
        # scatters them back, and both the convolution's input and the result are channels-last (no reorders).
        pixels = x.permute(0, 2, 3, 1).reshape(n, hp // d, d, wp // d, d, c)
        phases = pixels.permute(0, 2, 4, 1, 3, 5).reshape(n * d * d, hp // d, wp // d, c).permute(0, 3, 1, 2)
        y = F.conv2d(phases, self.weight, self.bias, padding=self.padding[0] // d, groups=self.groups)
        y = y.permute(0, 2, 3, 1).reshape(n, d, d, hp // d, wp // d, c).permute(0, 3, 1, 4, 2, 5)
        return y.reshape(n, hp, wp, c).permute(0, 3, 1, 2)[:, :, :h, :w]


class ConvNorm(nn.Module):
    """1×1 conv without bias → GroupNorm(1) [→ SiLU]."""

    def __init__(self, dim: int, act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm = nn.GroupNorm(1, dim)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class CrossVariableAttention(nn.Module):
    """Multi-head attention whose tokens are the C variables; a token is one head's
    (D/heads)·h·w feature map.

    With ``fast_kernels`` the products run in ``F.scaled_dot_product_attention`` on strided views of the
    projections: the reference's head split and output reshape each copy a whole latent, while the fused kernel
    reads the views in place and writes its output in the (B, C, heads, ·) layout that the output projection reads
    as it is. Equal up to float rounding (the softmax is computed in blocks)."""

    fast_kernels = True

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = ConvNorm(dim)
        self.k = ConvNorm(dim)
        self.v = ConvNorm(dim)
        self.out = ConvNorm(dim, act=True)

    def forward(self, x_bcdhw: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x_bcdhw.shape
        flat = x_bcdhw.reshape(b * c, d, h, w)
        if self.fast_kernels:
            q, k, v = (
                proj(flat).reshape(b, c, self.num_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v)
            )
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, C, ·), laid out as (B, C, heads, ·)
            return self.out(out.transpose(1, 2).reshape(b * c, d, h, w)).reshape(b, c, d, h, w)

        def heads(proj: nn.Module) -> torch.Tensor:  # (B·heads, C, D/heads·h·w)
            y = proj(flat).reshape(b, c, self.num_heads, -1).transpose(1, 2)
            return y.reshape(b * self.num_heads, c, -1)

        q, k, v = heads(self.q), heads(self.k), heads(self.v)
        scores = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        out = (scores @ v).reshape(b, self.num_heads, c, -1).transpose(1, 2)
        return self.out(out.reshape(b * c, d, h, w)).reshape(b, c, d, h, w)


class TAUBlock(nn.Module):
    """TAU sub-block on (N, D, h, w): large-kernel attention and a conv MLP, each with a
    BatchNorm in front, a per-channel layer scale and a residual."""

    def __init__(self, dim: int, drop_path: float, mlp_ratio: int = 4):
        super().__init__()
        hidden = dim * mlp_ratio
        self.norm1 = nn.BatchNorm2d(dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.lka_dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.lka_dilated = PhaseDilatedConv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.lka_pw = nn.Conv2d(dim, dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.scale_attn = nn.Parameter(torch.full((dim,), 0.01))
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp_in = nn.Conv2d(dim, hidden, 1)
        self.mlp_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.mlp_out = nn.Conv2d(hidden, dim, 1)
        self.scale_mlp = nn.Parameter(torch.full((dim,), 0.01))
        self.drop_path = DropPath(drop_path)
        for conv in (self.mlp_in, self.mlp_dw, self.mlp_out):
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(conv.bias)

    def attention(self, u: torch.Tensor) -> torch.Tensor:
        g = F.gelu(self.proj_in(u))
        gate = self.lka_pw(self.lka_dilated(self.lka_dw(g)))
        return self.proj_out(gate * g) + u

    def mlp(self, u: torch.Tensor) -> torch.Tensor:
        return self.mlp_out(F.gelu(self.mlp_dw(self.mlp_in(u))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.scale_attn[:, None, None] * self.attention(self.norm1(x)))
        return x + self.drop_path(self.scale_mlp[:, None, None] * self.mlp(self.norm2(x)))


class TranslatorBlock(nn.Module):
    """x ← GN(x + attn(x)); x ← GN(x + (x + TAU(x))) on (B, C, D, h, w)."""

    def __init__(self, dim: int, num_heads: int, drop_path: float):
        super().__init__()
        self.attn = CrossVariableAttention(dim, num_heads)
        self.norm_attn = nn.GroupNorm(1, dim)
        self.tau = TAUBlock(dim, drop_path)
        self.norm_out = nn.GroupNorm(1, dim)

    def forward(self, x_bcdhw: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x_bcdhw.shape
        x = self.norm_attn((x_bcdhw + self.attn(x_bcdhw)).reshape(b * c, d, h, w))
        x = self.norm_out(x + (x + self.tau(x)))
        return x.reshape(b, c, d, h, w)


class _FrozenBatchNormStatistics:
    """While a checkpointed block is recomputed in backward, its BatchNorms must not count the batch a
    second time: momentum 0 leaves the running statistics exactly as they are, and the batch counters are
    put back."""

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone()) for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.norms, self.saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class Translator(nn.Module):
    """(B, C, T·S, h, w) → (B, C, T·S, h, w): 1×1 in, N_T blocks, 1×1 out, per variable.

    With ``checkpoint_blocks`` the blocks' activations are recomputed in backward instead of stored
    (same numbers: DropPath replays its random draws, BatchNorm statistics are updated once)."""

    checkpoint_blocks = False

    def __init__(self, in_channels: int, dim: int, num_blocks: int, num_heads: int, drop_path: float):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, dim, 1)
        block = TranslatorBlock(dim, num_heads, drop_path)
        self.blocks = nn.ModuleList([copy.deepcopy(block) for _ in range(num_blocks)])
        self.conv_out = nn.Conv2d(dim, in_channels, 1)

    def forward(self, z_bcthw: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = z_bcthw.shape
        x = self.conv_in(z_bcthw.reshape(b * c, t, h, w)).reshape(b, c, -1, h, w)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(
                    block,
                    x,
                    use_reentrant=False,
                    context_fn=lambda blk=block: (contextlib.nullcontext(), _FrozenBatchNormStatistics(blk)),
                )
            else:
                x = block(x)
        return self.conv_out(x.reshape(b * c, -1, h, w)).reshape(b, c, t, h, w)
