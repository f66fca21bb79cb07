"""Met²Net: per-variable encoders/decoders and a shared Translator, each with a trained
(q) copy and a frozen momentum (k) copy (MODEL.md §1–3).

Shapes: x, y (B, T, C, H, W); latents in translator layout (B, C, T·S, h, w). h×w is ``ModelConfig.latent_grid``:
the grid padded to a multiple of the encoders' downsampling, divided by it (met2net/model/grid.py); the encoders pad,
the decoders crop, so x, y and forecasts are on the user's grid H×W whatever it is.
"""

from __future__ import annotations

import torch
from torch import nn

from met2net.config import ModelConfig
from met2net.model.encoder import Decoder, Encoder
from met2net.model.translator import CrossVariableAttention, PhaseDilatedConv2d, Translator, TranslatorBlock

TRAINED = ("encoders_q", "decoders_q", "translator_q")
COPIES = ("encoders_k", "decoders_k", "translator_k")
# Which frozen copy follows which trained module, per momentum (``momentum.codec`` / ``momentum.translator``).
MOMENTUM_PARTS = {
    "codec": (("encoders_q", "encoders_k"), ("decoders_q", "decoders_k")),
    "translator": (("translator_q", "translator_k"),),
}


class Met2Net(nn.Module):
    def __init__(self, cfg: ModelConfig, with_copies: bool = True):
        super().__init__()
        self.cfg = cfg
        num_vars = len(cfg.variables)

        def encoders() -> nn.ModuleList:
            return nn.ModuleList(Encoder(cfg.hid_s, cfg.num_spatial_layers) for _ in range(num_vars))

        def decoders() -> nn.ModuleList:
            grid = (cfg.grid[0], cfg.grid[1])
            return nn.ModuleList(Decoder(cfg.hid_s, cfg.num_spatial_layers, grid) for _ in range(num_vars))

        def translator() -> Translator:
            return Translator(
                cfg.frames * cfg.hid_s, cfg.hid_t, cfg.num_translator_blocks, cfg.num_heads, cfg.drop_path
            )

        self.encoders_q, self.decoders_q, self.translator_q = encoders(), decoders(), translator()
        self.with_copies = with_copies
        if with_copies:
            self.encoders_k, self.decoders_k, self.translator_k = encoders(), decoders(), translator()
            for q_name, k_name in zip(TRAINED, COPIES):
                k = getattr(self, k_name)
                k.load_state_dict(getattr(self, q_name).state_dict())
                k.requires_grad_(False)

    # --- building blocks of every schedule -------------------------------------------------
    @staticmethod
    def encode(encoders: nn.ModuleList, x_btchw: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) → (B, C, T·S, h, w), channel index t·S + s."""
        b, t, c, h, w = x_btchw.shape
        frames = x_btchw.reshape(b * t, c, h, w)
        z = torch.stack([enc(frames[:, i : i + 1]) for i, enc in enumerate(encoders)], dim=1)
        return z.reshape(b, t, c, *z.shape[2:]).transpose(1, 2).reshape(b, c, -1, *z.shape[-2:])

    @staticmethod
    def decode(decoders: nn.ModuleList, z_bcthw: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, C, T·S, h, w) → (B, T, C, H, W)."""
        b, c, _, h, w = z_bcthw.shape
        z = z_bcthw.reshape(b, c, frames, -1, h, w).transpose(1, 2).reshape(b * frames, c, -1, h, w)
        y = torch.cat([dec(z[:, i]) for i, dec in enumerate(decoders)], dim=1)
        return y.reshape(b, frames, c, *y.shape[-2:])

    def forecast(self, x_btchw: torch.Tensor) -> torch.Tensor:
        """ŷ = D_q(T_q(E_q(x))) in whatever mode the modules are in."""
        z = self.translator_q(self.encode(self.encoders_q, x_btchw))
        return self.decode(self.decoders_q, z, x_btchw.shape[1])

    @torch.no_grad()
    def predict(self, x_btchw: torch.Tensor) -> torch.Tensor:
        """Inference in eval mode; restores the previous mode so it never changes state."""
        was_training = self.training
        self.eval()
        try:
            return self.forecast(x_btchw)
        finally:
            self.train(was_training)

    def use_fast_kernels(self, on: bool = True) -> Met2Net:
        """Faster kernels with the same arithmetic up to float rounding (on by default);
        off runs the reference's plain PyTorch layers, the benchmarks' yardstick."""
        for m in self.modules():
            if isinstance(m, (PhaseDilatedConv2d, CrossVariableAttention)):
                m.fast_kernels = on
        return self

    def use_activation_checkpointing(self, on: bool = True) -> Met2Net:
        """Recompute the Translator blocks in backward instead of storing their activations."""
        for name in ("translator_q", "translator_k"):
            if hasattr(self, name):
                getattr(self, name).checkpoint_blocks = on
        return self

    def compile_parts(self) -> Met2Net:
        """``torch.compile`` every encoder, decoder and Translator block, trained and copies, in place
        (``nn.Module.compile``: parameter names, state dicts and checkpoints stay as they are). The modules compile
        at their first call; their random draws (DropPath) are not eager's."""
        for m in self.modules():
            if isinstance(m, (Encoder, Decoder, TranslatorBlock)):
                m.compile()
        return self

    # --- momentum copies ---------------------------------------------------------------------
    def momentum_pairs(self, part: str) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(trained q, frozen k) parameter pairs of ``part`` ("codec": encoders then decoders;
        "translator"), in ``parameters()`` order. The model only says which copy follows which;
        how a copy is moved (and where its weights live when an engine partitions them) is the training side's
        business, :mod:`met2net.training.momentum`."""
        if part not in MOMENTUM_PARTS:
            raise ValueError(f"unknown momentum part {part!r}; expected one of {sorted(MOMENTUM_PARTS)}")
        if not self.with_copies:
            raise ValueError("this Met2Net was built with_copies=False: it has no momentum copies")
        pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        for q_name, k_name in MOMENTUM_PARTS[part]:
            q, k = getattr(self, q_name), getattr(self, k_name)
            pairs.extend(zip(q.parameters(), k.parameters(), strict=True))
        return pairs


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
