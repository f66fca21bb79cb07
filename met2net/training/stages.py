"""What each training schedule trains, freezes and optimises — in one place.

- implicit: trains E_q, D_q, T_q. loss MSE(D_q T_k E_q x, y) + MSE(T_q E_k x, E_k y)
  [+ w·MSE(D_k T_q E_k x, y)]. E_k, D_k ← E_q, D_q mid-step; T_k ← T_q after backward.
- stage1: trains E_q, D_q through the frozen T_k. loss MSE(D_q T_k E_q x, y).
  E_k, D_k ← E_q, D_q after backward.
- stage2: trains T_q on frozen E_k. loss MSE(T_q E_k x, E_k y) + w·MSE(D_k T_q E_k x, y), w =
  training.stage2_pred_loss_weight (100): the forecast through the decoders stage one tuned, without which
  stage two made forecasts worse. T_k ← T_q after backward.
- stage1 and stage2 started from another stage's weights first copy the modules they read frozen
  (stage1: T_k ← T_q; stage2: E_k, D_k ← E_q, D_q): ``start_from_other_weights``.
- end_to_end (ablation): trains E_q, D_q, T_q. loss MSE(D_q T_q E_q x, y). No copies.

Every momentum update uses the q weights before this step's optimizer update: the loop
calls ``forward`` → backward → ``after_backward`` → optimizer step.

The reference applies T_k's momentum update before its backward pass and autograd then
reuses some of T_k's updated tensors (conv and norm weights, not the layer scales) for the
gradient into E_q; we update after backward, so L_rec's gradient is the true gradient of
the forward that was computed. ``momentum.reference_backward: true`` reproduces the
reference bitwise instead (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from met2net import config
from met2net.config import Config
from met2net.model.met2net import Met2Net
from met2net.training.momentum import rebind_translator_copy, update_codec_copies, update_translator_copy

CODEC_Q = ("encoders_q", "decoders_q")
TRANSLATOR_Q = ("translator_q",)


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor  # what backward runs on
    parts: dict[str, torch.Tensor]  # detached components, for logging


class Schedule:
    """One training schedule: its trained modules, its loss, its momentum updates."""

    name: str = ""
    trains: tuple[str, ...] = ()
    needs_copies: bool = True
    pred_weight_key: str = "pred_loss_weight"  # the training.* weight of MSE(D_k T_q E_k x, y), where computed

    def __init__(self, cfg: Config):
        self.codec_momentum = cfg.momentum.codec
        self.translator_momentum = cfg.momentum.translator
        self.pred_weight = getattr(cfg.training, self.pred_weight_key)
        self.reference_backward = cfg.momentum.reference_backward
        self.variables = list(cfg.model.variables)  # names of the per-variable validation errors, in channel order
        self.weights: torch.Tensor | None = None  # (C, H, W) weights of the pixel-space MSE; None: the plain mean

    def use_mask(self, valid: np.ndarray | None, device: torch.device) -> None:
        """Leave out of every pixel-space loss term (reconstruction, forecast) the points that a missing-value policy
        filled (``valid`` (C, H, W) False; met2net/data/masks.py): the MSE becomes the mean over variables of each
        variable's mean over its valid points, so a variable's weight does not depend on how much of it is land. None
        keeps F.mse_loss itself (every number as without masks). The latent term has no points and is unchanged: its
        target is the encoding of the filled field, whose fill the config decides."""
        if valid is None:
            self.weights = None
            return
        v = torch.as_tensor(np.asarray(valid), dtype=torch.float32, device=device)
        self.weights = v / (v.sum(dim=(1, 2), keepdim=True).clamp(min=1.0) * v.shape[0])

    def mse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The MSE of two (B, T, C, H, W) fields over the points that count (``use_mask``)."""
        if self.weights is None:
            return F.mse_loss(a, b)
        return (a.float() - b.float()).square().mul(self.weights).sum() / (a.shape[0] * a.shape[1])

    def configure(self, model: Met2Net) -> None:
        """requires_grad on exactly the trained modules; every module in train mode."""
        model.requires_grad_(False)
        for name in self.trains:
            getattr(model, name).requires_grad_(True)
        model.train()

    def forward(self, model: Met2Net, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def after_backward(self, model: Met2Net) -> None:
        """Momentum updates that need the pre-step q weights."""

    def start_from_other_weights(self, model: Met2Net) -> None:
        """Called once when the stage starts from another stage's weights (not when it resumes its own): the
        frozen copies this stage reads become the trained ones that the forecast D_q T_q E_q uses — the paper's
        momentum update at the end of a stage (Fig. 3), applied fully since the other stage has ended."""

    val_terms: tuple[str, ...] = ()  # the loss terms validation measures: config.VALIDATION_TERMS[name]

    def validation_losses(self, model: Met2Net, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """In eval mode and without side effects (no momentum update, no BatchNorm
        statistics): the forecast MSE of D_q T_q E_q — the evaluation's measure, in normalised
        units, over all variables (``forecast_mse``, what the ``best`` checkpoint is chosen by
        unless ``training.best_by`` says otherwise) and per variable (``forecast_mse/<variable>``,
        whose mean is ``forecast_mse``) — the schedule's own loss terms, and their sum as
        ``loss``. The same keys in the same order on every rank: the loop sums them over ranks."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                forecast = model.forecast(x)
                parts = {"forecast_mse": self.mse(forecast, y)}
                per_variable = self._per_variable(forecast, y)
                parts.update({f"forecast_mse/{v}": e for v, e in zip(self.variables, per_variable, strict=True)})
                if "rec" in self.val_terms:
                    z_x = model.encode(model.encoders_q, x)
                    rec = model.decode(model.decoders_q, model.translator_k(z_x), x.shape[1])
                    parts["rec"] = self.mse(rec, y)
                if "latent" in self.val_terms:
                    zk_x = model.encode(model.encoders_k, x)
                    zk_y = model.encode(model.encoders_k, y)
                    parts["latent"] = F.mse_loss(model.translator_q(zk_x), zk_y)
        finally:
            model.train(was_training)
        terms = self.val_terms or ("forecast_mse",)
        parts["loss"] = sum(parts[k] for k in terms)
        return parts

    def _per_variable(self, forecast: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(C,) MSE of each variable over (B, T, H, W), over its valid points under a mask; their mean is ``mse``."""
        err = (forecast.float() - y.float()).square()  # (B, T, C, H, W)
        if self.weights is None:
            return err.mean(dim=(0, 1, 3, 4))
        return err.mul(self.weights).sum(dim=(0, 1, 3, 4)) * (err.shape[2] / (err.shape[0] * err.shape[1]))

    # -- shared pieces ---------------------------------------------------------------------
    def _latent_terms(
        self, model: Met2Net, zk_x: torch.Tensor, zk_y: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        z_pred = model.translator_q(zk_x)
        terms = {"latent": F.mse_loss(z_pred, zk_y)}
        if self.pred_weight > 0:
            terms["pred"] = self.mse(model.decode(model.decoders_k, z_pred, y.shape[1]), y)
        return terms

    def _total(self, terms: dict[str, torch.Tensor]) -> StepOutput:
        loss = sum(v * (self.pred_weight if k == "pred" else 1.0) for k, v in terms.items())
        return StepOutput(loss, {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}})


class Implicit(Schedule):
    """The paper's step: Stage I and Stage II in every optimizer step (MODEL.md §3)."""

    trains = CODEC_Q + TRANSLATOR_Q

    def forward(self, model: Met2Net, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        z_x = model.encode(model.encoders_q, x)
        rec = model.decode(model.decoders_q, model.translator_k(z_x), x.shape[1])
        terms = {"rec": self.mse(rec, y)}
        update_codec_copies(model, self.codec_momentum)
        with torch.no_grad():
            if self.codec_momentum == 0.0:  # E_k == E_q now: reuse E_q(x), encode y with E_q
                zk_x = z_x.detach()
                zk_y = model.encode(model.encoders_q, y)
            else:
                zk_x = model.encode(model.encoders_k, x)
                zk_y = model.encode(model.encoders_k, y)
        terms.update(self._latent_terms(model, zk_x, zk_y, y))
        if self.reference_backward:
            rebind_translator_copy(model, self.translator_momentum)
        return self._total(terms)

    def after_backward(self, model: Met2Net) -> None:
        if not self.reference_backward:
            update_translator_copy(model, self.translator_momentum)


class StageOne(Schedule):
    """Encoders/decoders learn through the frozen Translator copy T_k."""

    trains = CODEC_Q

    def forward(self, model: Met2Net, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        rec = model.decode(model.decoders_q, model.translator_k(model.encode(model.encoders_q, x)), x.shape[1])
        return self._total({"rec": self.mse(rec, y)})

    def after_backward(self, model: Met2Net) -> None:
        update_codec_copies(model, self.codec_momentum)

    def start_from_other_weights(self, model: Met2Net) -> None:
        update_translator_copy(model, 0.0)  # the decoders learn to read the Translator that forecasts


class StageTwo(Schedule):
    """The Translator learns in the frozen encoders' latent space."""

    trains = TRANSLATOR_Q
    pred_weight_key = "stage2_pred_loss_weight"

    def forward(self, model: Met2Net, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        with torch.no_grad():
            zk_x = model.encode(model.encoders_k, x)
            zk_y = model.encode(model.encoders_k, y)
        return self._total(self._latent_terms(model, zk_x, zk_y, y))

    def after_backward(self, model: Met2Net) -> None:
        update_translator_copy(model, self.translator_momentum)

    def start_from_other_weights(self, model: Met2Net) -> None:
        update_codec_copies(model, 0.0)  # the latent space and the decoders of stage one's last weights


class EndToEnd(Schedule):
    """Ablation: one set of modules, trained on the forecast error; no copies."""

    trains = CODEC_Q + TRANSLATOR_Q
    needs_copies = False

    def forward(self, model: Met2Net, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        return self._total({"forecast_mse": self.mse(model.forecast(x), y)})


# The names are declared once, in met2net.config.SCHEDULES (torch-free, so config validation and the launchers
# use them without importing torch); here each gets its class, in the same order.
SCHEDULES: dict[str, type[Schedule]] = dict(
    zip(config.SCHEDULES, (Implicit, StageOne, StageTwo, EndToEnd), strict=True)
)
for _name, _cls in SCHEDULES.items():
    _cls.name = _name
    _cls.val_terms = config.VALIDATION_TERMS[_name]


def make_schedule(cfg: Config) -> Schedule:
    return SCHEDULES[cfg.training.schedule](cfg)
