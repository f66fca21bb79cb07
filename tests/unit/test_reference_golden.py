"""Golden values from the authors' reference implementation (tests/assets/README.md).

The fixture holds, for two small configurations, the reference model's (perturbed) weights
under its own key names, inputs, its eval-mode prediction and its seeded train-mode losses.
No reference code is used here: only our importer and model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from met2net.config import ModelConfig
from met2net.model.met2net import Met2Net
from met2net.model.reference_keys import convert_reference_state_dict

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "reference_small.pt"
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def _entries(golden: dict):
    assert set(golden) == {"small_ns2", "small_ns4"}
    return golden.items()


def _model(entry: dict) -> Met2Net:
    model = Met2Net(ModelConfig(**entry["model_cfg"]), with_copies=True)
    ours, _ = convert_reference_state_dict(entry["reference_state_dict"])
    model.load_state_dict(ours, strict=True)
    return model


@pytest.mark.parametrize("prefix", ["", "model."])
def test_importer_maps_every_reference_key(golden, prefix):
    for name, entry in _entries(golden):
        ref = {prefix + k: v for k, v in entry["reference_state_dict"].items()}
        ours, dropped = convert_reference_state_dict(ref)
        expected = Met2Net(ModelConfig(**entry["model_cfg"]), with_copies=True).state_dict()
        assert set(ours) == set(expected), name
        for key, value in expected.items():
            assert ours[key].shape == value.shape, (name, key)
        dead = sorted(k for k in ref if ".ff.ff1.attn.spatial_gating_unit.fc." in k)
        assert dead and sorted(dropped) == dead, name
        assert len(ours) + len(dropped) == len(ref), name


def test_predict_matches_reference_sample(golden):
    for name, entry in _entries(golden):
        model = _model(entry)
        pred = model.predict(entry["x"])
        torch.testing.assert_close(pred, entry["sample"], atol=ATOL, rtol=RTOL, msg=name)


def test_stage_one_train_mode_matches_reference(golden):
    """D_q(T_k(E_q(x))) in train mode (DropPath 0.1 draws in the reference's order)."""
    for name, entry in _entries(golden):
        model = _model(entry).train()
        x, y = entry["x"], entry["y"]
        torch.manual_seed(entry["seed"])
        with torch.no_grad():
            rec = Met2Net.decode(model.decoders_q, model.translator_k(Met2Net.encode(model.encoders_q, x)), x.shape[1])
        loss_rec = F.mse_loss(rec, y)
        torch.testing.assert_close(loss_rec, entry["loss_rec"], atol=ATOL, rtol=RTOL, msg=name)
        # T_k's BatchNorm statistics change only in the reference's stage I: they must agree too
        after, _ = convert_reference_state_dict(entry["state_after_forward"])
        for key, value in model.translator_k.state_dict().items():
            if "running_" in key or "num_batches_tracked" in key:
                torch.testing.assert_close(
                    value, after[f"translator_k.{key}"], atol=ATOL, rtol=RTOL, msg=f"{name}: {key}"
                )


@pytest.mark.parametrize("reference_backward", [True, False])
def test_full_implicit_step_matches_reference(golden, reference_backward):
    """Losses, gradients and the state after one step. With ``reference_backward`` every
    gradient is the reference's; without it only the E_q gradients differ (by the effect of
    the reference updating T_k before its backward pass)."""
    from met2net.config import Config, MomentumConfig
    from met2net.training.stages import Implicit

    for name, entry in _entries(golden):
        model = _model(entry)
        cfg = Config(
            model=ModelConfig(**entry["model_cfg"]), momentum=MomentumConfig(reference_backward=reference_backward)
        )
        schedule = Implicit(cfg)
        schedule.configure(model)
        torch.manual_seed(entry["seed"])
        out = schedule.forward(model, entry["x"], entry["y"])
        out.loss.backward()
        schedule.after_backward(model)
        for ours, ref in (("loss", "loss"), ("rec", "loss_rec"), ("latent", "loss_latent")):
            torch.testing.assert_close(out.parts[ours], entry[ref], atol=ATOL, rtol=RTOL, msg=name)
        grads, _ = convert_reference_state_dict(entry["grads"])
        params = dict(model.named_parameters())
        assert set(grads) == {k for k, p in params.items() if p.requires_grad}
        encoder_gap = 0.0
        for key, ref_grad in grads.items():
            if key.startswith("encoders_q") and not reference_backward:
                encoder_gap = max(encoder_gap, (params[key].grad - ref_grad).abs().max().item())
                continue
            torch.testing.assert_close(params[key].grad, ref_grad, atol=ATOL, rtol=RTOL, msg=f"{name}: {key}")
        if not reference_backward:
            assert encoder_gap > 1e-4, "the reference's backward-order effect should be visible"
        after, _ = convert_reference_state_dict(entry["state_after_forward"])
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, after[key], atol=ATOL, rtol=RTOL, msg=f"{name}: {key}")
