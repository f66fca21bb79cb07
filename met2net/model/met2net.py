"""Met²Net: per-variable encoders/decoders and a shared Translator, each with a trained
(q) copy and a frozen momentum (k) copy (MODEL.md §1–3).

Shapes: x, y (B, T, C, H, W); latents in translator layout (B, C, T·S, h, w).
"""

from __future__ import annotations

import torch
from torch import nn

from met2net.config import ModelConfig
from met2net.model.encoder import Decoder, Encoder
from met2net.model.translator import PhaseDilatedConv2d, Translator

TRAINED = ("encoders_q", "decoders_q", "translator_q")
COPIES = ("encoders_k", "decoders_k", "translator_k")


class Met2Net(nn.Module):
    def __init__(self, cfg: ModelConfig, with_copies: bool = True):
        super().__init__()
        self.cfg = cfg
        num_vars = len(cfg.variables)

        def encoders() -> nn.ModuleList:
            return nn.ModuleList(Encoder(cfg.hid_s, cfg.num_spatial_layers) for _ in range(num_vars))

        def decoders() -> nn.ModuleList:
            return nn.ModuleList(Decoder(cfg.hid_s, cfg.num_spatial_layers) for _ in range(num_vars))

        def translator() -> Translator:
            return Translator(cfg.frames * cfg.hid_s, cfg.hid_t, cfg.num_translator_blocks,
                              cfg.num_heads, cfg.drop_path)

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
            if isinstance(m, PhaseDilatedConv2d):
                m.fast_kernels = on
        return self

    def use_activation_checkpointing(self, on: bool = True) -> Met2Net:
        """Recompute the Translator blocks in backward instead of storing their activations."""
        for name in ("translator_q", "translator_k"):
            if hasattr(self, name):
                getattr(self, name).checkpoint_blocks = on
        return self

    # --- momentum copies ---------------------------------------------------------------------
    @torch.no_grad()
    def update_codec_copies(self, momentum: float) -> None:
        """E_k, D_k ← m·k + (1−m)·q (a copy at m = 0, as the reference)."""
        _momentum_update(self.encoders_q, self.encoders_k, momentum)
        _momentum_update(self.decoders_q, self.decoders_k, momentum)

    @torch.no_grad()
    def update_translator_copy(self, momentum: float) -> None:
        """T_k ← m·T_k + (1−m)·T_q on parameters (not buffers)."""
        _momentum_update(self.translator_q, self.translator_k, momentum)


@torch.no_grad()
def rebind_translator_copy(model: Met2Net, momentum: float) -> None:
    """The reference's T_k update, ``p.data = ...``: new tensors that autograd does not
    see as a modification, so a pending backward reads some of them (conv and norm
    weights) and not others (the layer scales, saved as views)."""
    for q, k in zip(model.translator_q.parameters(), model.translator_k.parameters()):
        k.data = k.data * momentum + q.data * (1.0 - momentum)


def _momentum_update(q: nn.Module, k: nn.Module, m: float) -> None:
    params = list(zip(q.parameters(), k.parameters()))
    if params and hasattr(params[0][1], "ds_tensor"):
        _zero3_momentum_update(params, m)
    else:
        _blend([(a.data, b.data) for a, b in params], m)


def _blend(pairs: list[tuple[torch.Tensor, torch.Tensor]], m: float) -> None:
    """k ← k·m + q·(1−m) with the reference's two roundings (so runs compare bitwise); a copy at m = 0."""
    q_tensors, k_tensors = [a for a, _ in pairs], [b for _, b in pairs]
    if m == 0.0:
        torch._foreach_copy_(k_tensors, q_tensors)
    else:
        q_scaled = torch._foreach_mul(q_tensors, 1.0 - m)
        torch._foreach_mul_(k_tensors, m)
        torch._foreach_add_(k_tensors, q_scaled)


def _zero3_momentum_update(params: list[tuple[nn.Parameter, nn.Parameter]], m: float) -> None:
    """Under ZeRO-3 each rank updates its own partitions (``ds_tensor``): q and k parameters of one shape are
    partitioned alike, so no gather is needed. A frozen copy that is whole at the moment (a small persistent
    parameter) also gets its full ``data`` updated, from its trained twin gathered if need be (small by
    definition), unless the full data is the partition itself (one rank)."""
    import deepspeed

    def whole(p: nn.Parameter) -> bool:
        return p.data.numel() == p.ds_numel and p.data.data_ptr() != p.ds_tensor.data_ptr()

    pairs = [(a.ds_tensor, b.ds_tensor) for a, b in params]
    full = [(a, b) for a, b in params if whole(b)]
    with deepspeed.zero.GatheredParameters([a for a, _ in full if a.data.numel() != a.ds_numel]):
        _blend(pairs + [(a.data, b.data) for a, b in full], m)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
