import pytest
import torch

from met2net.model.met2net import Met2Net
from met2net.training import checkpoint
from tests.conftest import small_config


def save_weights(stage_dir, step, model, meta):
    """A weights-only checkpoint from one process, as the loop writes them."""
    tmp = checkpoint.partial_dir(stage_dir, step)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    return checkpoint.publish(stage_dir, step, meta)


def save(tmp_path, model, cfg, step=3, schedule="stage1"):
    return save_weights(
        tmp_path / "checkpoints" / schedule, step, model, {"schedule": schedule, "model": cfg.model.__dict__.copy()}
    )


def test_save_marks_complete_then_latest(tmp_path, small_cfg):
    model = Met2Net(small_cfg.model)
    ckpt = save(tmp_path, model, small_cfg)
    assert (ckpt / "COMPLETE").exists() and (ckpt / "model.pt").exists()
    assert (tmp_path / "checkpoints/stage1/latest").read_text() == "step_3"
    assert not list((tmp_path / "checkpoints/stage1").glob(".*partial"))
    meta = checkpoint.load_meta(ckpt)
    assert meta["step"] == 3 and meta["schedule"] == "stage1" and meta["torch"] == torch.__version__


def test_init_from_run_dir_loads_weights_only(tmp_path, small_cfg):
    src = Met2Net(small_cfg.model)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    save(tmp_path, src, small_cfg)
    dst = Met2Net(small_cfg.model)
    checkpoint.init_from(dst, tmp_path, "stage1", small_cfg.model.__dict__)
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


def test_refuses_incomplete_checkpoint(tmp_path, small_cfg):
    ckpt = save(tmp_path, Met2Net(small_cfg.model), small_cfg)
    (ckpt / "COMPLETE").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete .no COMPLETE marker"):
        checkpoint.init_from(Met2Net(small_cfg.model), tmp_path, "stage1", small_cfg.model.__dict__)


def test_refuses_missing_stage_one(tmp_path, small_cfg):
    with pytest.raises(FileNotFoundError, match="checkpoints/stage1/latest is missing"):
        checkpoint.init_from(Met2Net(small_cfg.model), tmp_path, "stage1", small_cfg.model.__dict__)


def test_refuses_other_model_configuration(tmp_path, small_cfg):
    save(tmp_path, Met2Net(small_cfg.model), small_cfg)
    other = small_config("model.hid_t=32")
    with pytest.raises(ValueError, match=r"model.hid_t: checkpoint 16 vs config 32"):
        checkpoint.init_from(Met2Net(other.model), tmp_path, "stage1", other.model.__dict__)


def test_refuses_wrong_schedule(tmp_path, small_cfg):
    ckpt = save(tmp_path, Met2Net(small_cfg.model), small_cfg, schedule="implicit")
    with pytest.raises(ValueError, match="is a 'implicit' checkpoint; expected 'stage1'"):
        checkpoint.init_from(Met2Net(small_cfg.model), ckpt, "stage1", small_cfg.model.__dict__)


def test_rewrite_of_a_step_replaces_it_whole(tmp_path, small_cfg):
    model = Met2Net(small_cfg.model)
    save(tmp_path, model, small_cfg)
    ckpt = save(tmp_path, model, small_cfg)
    assert sorted(p.name for p in ckpt.iterdir()) == ["COMPLETE", "meta.json", "model.pt"]


def test_init_from_a_stage_directory_follows_latest(tmp_path, small_cfg):
    model = Met2Net(small_cfg.model)
    save(tmp_path, model, small_cfg, step=2, schedule="stage2")
    save(tmp_path, model, small_cfg, step=5, schedule="stage2")
    meta = checkpoint.init_from(
        Met2Net(small_cfg.model), tmp_path / "checkpoints/stage2", None, small_cfg.model.__dict__
    )
    assert meta["step"] == 5


def test_prune_keeps_the_newest_and_the_best(tmp_path, small_cfg):
    model = Met2Net(small_cfg.model)
    stage = tmp_path / "checkpoints" / "stage1"
    for step, loss in ((1, 0.9), (2, 0.2), (3, 0.5), (4, 0.7), (5, 0.6)):
        save_weights(stage, step, model, {"schedule": "stage1", "val": {"loss": loss}})
    removed = checkpoint.prune(stage, keep_last=2)
    assert sorted(p.name for p in removed) == ["step_1", "step_3"]
    assert sorted(p.name for p in stage.glob("step_*")) == ["step_2", "step_4", "step_5"]
    assert (stage / "best").read_text() == "step_2" and (stage / "latest").read_text() == "step_5"
    assert checkpoint.prune(stage, keep_last=0) == []


def test_prune_picks_best_by_the_configured_validation_key(tmp_path, small_cfg):
    model = Met2Net(small_cfg.model)
    stage = tmp_path / "checkpoints" / "implicit"
    # older checkpoints recorded only `loss`; the forecast error and the loss disagree on the best
    vals = {1: {"loss": 0.1}, 2: {"loss": 0.5, "forecast_mse": 0.3}, 3: {"loss": 0.2, "forecast_mse": 0.4}}
    for step, val in vals.items():
        save_weights(stage, step, model, {"schedule": "implicit", "val": val})
    checkpoint.prune(stage, keep_last=0)  # default: forecast_mse, among the checkpoints that have it
    assert (stage / "best").read_text() == "step_2"
    checkpoint.prune(stage, keep_last=0, best_by="loss")
    assert (stage / "best").read_text() == "step_1"
    removed = checkpoint.prune(stage, keep_last=1, best_by="forecast_mse")
    assert [p.name for p in removed] == ["step_1"] and (stage / "best").read_text() == "step_2"
