import copy

import pytest
import torch

from met2net.model.met2net import COPIES, TRAINED, Met2Net
from met2net.training.reference_step import LiteralImplicit
from met2net.training.stages import SCHEDULES, make_schedule
from tests.conftest import small_config

SHAPE = (2, 2, 3, 8, 16)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*SHAPE, generator=g), torch.randn(*SHAPE, generator=g)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run_steps(model, schedule, steps=3, lr=1e-2, seed=0):
    """forward → backward → after_backward → optimizer step, as the loop does."""
    schedule.configure(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for s in range(steps):
        x, y = batch(s)
        torch.manual_seed(seed + s)  # DropPath draws
        out = schedule.forward(model, x, y)
        out.loss.backward()
        schedule.after_backward(model)
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append((out.parts, grads))
    return history


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_frozen_parameters_get_no_gradient_and_do_not_change(name):
    cfg = small_config(f"training.schedule={name}")
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model, with_copies=schedule.needs_copies)
    before = params(model)
    ((_, grads),) = run_steps(model, schedule, steps=1)
    trained = tuple(schedule.trains)
    for key, value in params(model).items():
        group = key.split(".")[0]
        if group in trained:
            assert key in grads, f"{name}: trained parameter {key} got no gradient"
            assert grads[key].abs().sum() > 0 or "num_batches" in key
        else:
            assert key not in grads, f"{name}: frozen parameter {key} got a gradient"
            if group in TRAINED:  # frozen q modules never move; k copies move only by momentum
                assert torch.equal(value, before[key]), f"{name}: frozen {key} changed"


def test_stage_two_freezes_the_codecs_exactly():
    cfg = small_config("training.schedule=stage2", "momentum.codec=0.5")
    model = Met2Net(cfg.model)
    before = params(model)
    run_steps(model, make_schedule(cfg), steps=2)
    after = params(model)
    for k in before:
        if k.startswith(("encoders", "decoders")):
            assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("translator_k"))


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_translator_momentum_uses_the_pre_step_translator(momentum):
    cfg = small_config(f"momentum.translator={momentum}", "model.drop_path=0")
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model)
    run_steps(model, schedule, steps=2)  # make T_q and T_k differ
    tq, tk = params(model.translator_q), params(model.translator_k)
    run_steps(model, schedule, steps=1)
    tk_new, tq_new = params(model.translator_k), params(model.translator_q)
    for k in tk:
        expected = tk[k] * momentum + tq[k] * (1 - momentum)
        assert torch.equal(tk_new[k], expected), k  # bitwise: the reference's two roundings
    post = {k: tk[k] * momentum + tq_new[k] * (1 - momentum) for k in tk}
    assert any(not torch.allclose(tk_new[k], post[k]) for k in tk)


def test_implicit_codec_copy_equals_pre_step_encoders():
    cfg = small_config("momentum.codec=0")
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model)
    run_steps(model, schedule, steps=1)
    schedule.configure(model)
    x, y = batch(5)
    out = schedule.forward(model, x, y)
    out.loss.backward()
    schedule.after_backward(model)
    for part in ("encoders", "decoders"):
        q, k = params(getattr(model, f"{part}_q")), params(getattr(model, f"{part}_k"))
        assert all(torch.equal(q[n], k[n]) for n in q), f"{part}_k != {part}_q after the step's copy"


def test_codec_momentum_blends_instead_of_copying():
    cfg = small_config("momentum.codec=0.5")
    model = Met2Net(cfg.model)
    run_steps(model, make_schedule(cfg), steps=2)
    q, k = params(model.encoders_q), params(model.encoders_k)
    assert any(not torch.equal(q[n], k[n]) for n in q)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.drop_path=0"],
        ["model.drop_path=0.1"],
        ["momentum.codec=0.3", "model.drop_path=0.1"],
        ["training.pred_loss_weight=0.5", "model.drop_path=0"],
    ],
)
def test_optimised_step_equals_literal_reference_order_step(overrides):
    cfg = small_config(*overrides)
    torch.manual_seed(3)
    fast_model = Met2Net(cfg.model)
    literal_model = copy.deepcopy(fast_model)
    fast = run_steps(fast_model, make_schedule(cfg), steps=3)
    literal = run_steps(literal_model, LiteralImplicit(cfg), steps=3)
    for (fp, fg), (lp, lg) in zip(fast, literal):
        for term in ("loss", "rec", "latent"):
            torch.testing.assert_close(fp[term], lp[term], rtol=1e-6, atol=1e-6)
        assert fg.keys() == lg.keys()
        for k in fg:
            torch.testing.assert_close(fg[k], lg[k], rtol=1e-6, atol=1e-6)
    for (k, a), b in zip(fast_model.state_dict().items(), literal_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_validation_and_prediction_change_nothing(name):
    cfg = small_config(f"training.schedule={name}")
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model, with_copies=schedule.needs_copies)
    run_steps(model, schedule, steps=1)  # non-trivial BatchNorm statistics
    schedule.configure(model)
    before = state(model)
    x, y = batch(9)
    parts = schedule.validation_losses(model, x, y)
    model.predict(x)
    assert model.training, "validation must restore train mode"
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.isfinite(parts["loss"]) and "forecast_mse" in parts


def test_training_step_does_update_batchnorm_statistics():
    """The counterpart of the test above: a train step changes T_k's running statistics."""
    cfg = small_config()
    model = Met2Net(cfg.model)
    before = state(model.translator_k)
    run_steps(model, make_schedule(cfg), steps=1)
    after = state(model.translator_k)
    assert not torch.equal(before["blocks.0.tau.norm1.running_mean"], after["blocks.0.tau.norm1.running_mean"])


def test_stage_one_loss_is_the_implicit_reconstruction_term():
    cfg = small_config("model.drop_path=0")
    model = Met2Net(cfg.model)
    x, y = batch(1)
    implicit = make_schedule(cfg)
    stage1 = make_schedule(small_config("model.drop_path=0", "training.schedule=stage1"))
    stage1.configure(model)
    a = stage1.forward(model, x, y).parts["rec"]
    b = implicit.forward(copy.deepcopy(model), x, y).parts["rec"]
    assert torch.equal(a, b)
    assert set(COPIES).isdisjoint(stage1.trains)


def test_activation_checkpointing_changes_no_number():
    """Recomputing the Translator blocks in backward gives bitwise the same losses, gradients, weights and
    BatchNorm statistics (DropPath on)."""
    cfg = small_config("model.drop_path=0.1")
    torch.manual_seed(4)
    plain = Met2Net(cfg.model)
    recomputed = copy.deepcopy(plain).use_activation_checkpointing()
    a = run_steps(plain, make_schedule(cfg), steps=2)
    b = run_steps(recomputed, make_schedule(cfg), steps=2)
    for (pa, ga), (pb, gb) in zip(a, b):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
        assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    sa, sb = plain.state_dict(), recomputed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:3]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_validation_reports_the_forecast_error_per_variable(name):
    cfg = small_config(f"training.schedule={name}")
    schedule = make_schedule(cfg)
    model = Met2Net(cfg.model, with_copies=schedule.needs_copies)
    x, y = batch(5)
    parts = schedule.validation_losses(model, x, y)
    per_variable = [f"forecast_mse/{v}" for v in cfg.model.variables]
    assert list(parts) == ["forecast_mse", *per_variable, *schedule.val_terms, "loss"]
    model.eval()
    with torch.no_grad():
        forecast = model.forecast(x)
    model.train()
    error = (forecast - y).square()
    assert torch.equal(parts["forecast_mse"], torch.nn.functional.mse_loss(forecast, y))  # as before the new keys
    for c, key in enumerate(per_variable):
        torch.testing.assert_close(parts[key], error[:, :, c].mean(), rtol=1e-6, atol=0)
    mean = torch.stack([parts[k] for k in per_variable]).mean()
    torch.testing.assert_close(mean, parts["forecast_mse"], rtol=1e-6, atol=0)


def test_stage_two_trains_on_the_forecast_through_the_frozen_decoders_by_default():
    cfg = small_config("training.schedule=stage2")
    assert cfg.training.stage2_pred_loss_weight == 100.0 and cfg.training.pred_loss_weight == 0.0
    out = make_schedule(cfg).forward(Met2Net(cfg.model), *batch())
    assert out.parts["loss"] == out.parts["latent"] + 100.0 * out.parts["pred"]
    off = small_config("training.schedule=stage2", "training.stage2_pred_loss_weight=0")
    assert "pred" not in make_schedule(off).forward(Met2Net(off.model), *batch()).parts
    implicit = small_config("training.schedule=implicit")  # the paper's step keeps its own weight, 0
    assert "pred" not in make_schedule(implicit).forward(Met2Net(implicit.model), *batch()).parts


@pytest.mark.parametrize(
    ("name", "synced", "kept"), [("stage1", "translator", "codec"), ("stage2", "codec", "translator")]
)
def test_a_stage_started_from_other_weights_reads_the_trained_copies(name, synced, kept):
    """Stage one then learns the decoders through the Translator that forecasts; stage two keeps the latent space
    and decoders of stage one's last weights. The other copies keep their momentum state."""
    cfg = small_config("training.schedule=implicit", "momentum.codec=0.5")
    model = Met2Net(cfg.model)
    run_steps(model, make_schedule(cfg), steps=2)  # every copy now differs from its trained module
    for part in ("codec", "translator"):
        assert any(not torch.equal(q, k) for q, k in model.momentum_pairs(part))
    before = state(model)
    make_schedule(small_config(f"training.schedule={name}")).start_from_other_weights(model)
    assert all(torch.equal(q, k) for q, k in model.momentum_pairs(synced))
    assert any(not torch.equal(q, k) for q, k in model.momentum_pairs(kept))
    after = state(model)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == ({"translator_k"} if synced == "translator" else {"encoders_k", "decoders_k"})
