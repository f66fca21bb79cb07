"""The implicit step written literally in the reference's order, for tests and benchmarks.

It computes E_k(x) separately, keeps the zero-weight prediction term (and its backward
through D_k), and compares latents in the reference's (B·T, C, S, h, w) layout. The
optimised :class:`~met2net.training.stages.Implicit` must give the same losses, gradients
and updated weights; ``tools/bench/step.py`` measures how much faster it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from met2net.model.met2net import Met2Net
from met2net.training.momentum import update_codec_copies
from met2net.training.stages import Implicit, StepOutput


def _per_frame(z_bcthw: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, C, T·S, h, w) → (B·T, C, S, h, w), the reference's latent layout."""
    b, c, _, h, w = z_bcthw.shape
    return z_bcthw.reshape(b, c, frames, -1, h, w).transpose(1, 2).reshape(b * frames, c, -1, h, w)


class LiteralImplicit(Implicit):
    name = "implicit_literal"

    def forward(self, model: Met2Net, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        t = x.shape[1]
        rec = model.decode(model.decoders_q, model.translator_k(model.encode(model.encoders_q, x)), t)
        loss_rec = F.mse_loss(rec, y)
        update_codec_copies(model, self.codec_momentum)
        z_pred = model.translator_q(model.encode(model.encoders_k, x))
        z_y = model.encode(model.encoders_k, y)
        loss_latent = F.mse_loss(_per_frame(z_pred, t), _per_frame(z_y, t))
        loss_pre = F.mse_loss(model.decode(model.decoders_k, z_pred, t), y)
        loss = loss_rec + loss_latent + self.pred_weight * loss_pre
        parts = {
            "loss": loss.detach(),
            "rec": loss_rec.detach(),
            "latent": loss_latent.detach(),
            "pred": loss_pre.detach(),
        }
        return StepOutput(loss, parts)
