"""BatchNorm running statistics on 2 real ranks (gloo): averaged at validation and checkpoints, identical everywhere."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from met2net.config import load_config
from met2net.training.buffers import average_batchnorm_statistics, batchnorm_statistics
from tests.distributed.harness import ROOT, run_ranks
from tests.e2e.test_train_cli import TINY


def gather(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's concatenated ``tensors``, in rank order."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    out = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(out, flat)
    return out


def average_vs_global_batch(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GELU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    ).train()
    single = copy.deepcopy(model)
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
    micro = len(x) // world
    with torch.no_grad():
        model(x[rank * micro : (rank + 1) * micro])
        single(x)  # one process with the whole (global) batch
    before = gather(batchnorm_statistics(model))
    count = average_batchnorm_statistics(model)
    after = gather(batchnorm_statistics(model))
    return {
        "before": before,
        "after": after,
        "count": count,
        "model": model.state_dict(),
        "single": single.state_dict(),
    }


@pytest.mark.distributed
def test_average_is_every_ranks_mean_and_the_global_batch_running_mean(tmp_path):
    ranks = run_ranks(average_vs_global_batch, 2, tmp_path)
    before, after = ranks[0]["before"], ranks[0]["after"]
    assert ranks[0]["count"] == 4 * 4  # running_mean and running_var of two BatchNorms of 4 channels
    assert not torch.equal(before[0], before[1])  # each rank tracked its own micro-batch
    mean = ((before[0] + before[1]) / 2).float()
    assert torch.equal(after[0], after[1]) and torch.equal(after[0].float(), mean)  # the same bits everywhere
    assert torch.equal(ranks[1]["after"][0], after[0])
    model, single = ranks[0]["model"], ranks[0]["single"]
    assert torch.equal(model["1.num_batches_tracked"], single["1.num_batches_tracked"])  # counted, not averaged
    # The first BatchNorm sees the same inputs either way: its running mean is the global batch's, its running
    # variance only close (per-rank variances leave out the spread between the ranks' means).
    torch.testing.assert_close(model["1.running_mean"], single["1.running_mean"], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(model["1.running_var"], single["1.running_var"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model["1.running_var"], single["1.running_var"], rtol=0.05, atol=0)


def train_then_validate(rank: int, world: int, run_dir: str) -> dict:
    from met2net.training.build import build_trainer

    cfg = load_config(
        ROOT / "configs/quickstart.yaml",
        [
            *TINY,
            f"run.dir={run_dir}",
            "training.progress=false",
            "training.schedule=implicit",
            "deepspeed.zero_stage=2",
            "training.max_steps=3",
        ],
    )
    trainer = build_trainer(cfg)
    trainer.train()  # ends with a validation and a checkpoint
    end = gather(batchnorm_statistics(trainer.model))
    x, y = next(iter(trainer.train_loader))
    trainer.train_step(x, y)  # every rank its own micro-batch: the statistics drift apart
    drifted = gather(batchnorm_statistics(trainer.model))
    trainer.validate()
    synced = gather(batchnorm_statistics(trainer.model))
    val_x, val_y = next(iter(trainer.val_loader))
    val_x, val_y = gather([val_x])[0].float().view_as(val_x), gather([val_y])[0].float().view_as(val_y)  # rank 0's
    val = trainer.schedule.validation_losses(trainer.model, val_x, val_y)
    result = {
        "end": end,
        "drifted": drifted,
        "synced": synced,
        "val": gather(list(val.values())),
        "model_pt": torch.load(trainer.stage_dir / "step_3/model.pt", weights_only=True),
    }
    del trainer
    return result


@pytest.mark.distributed
def test_trained_ranks_hold_the_same_statistics_and_validate_alike(tmp_path):
    ranks = run_ranks(train_then_validate, 2, tmp_path, str(tmp_path / "run"))
    r = ranks[0]
    assert len(r["end"][0]) > 0 and torch.equal(r["end"][0], r["end"][1])  # after the final save
    assert not torch.equal(r["drifted"][0], r["drifted"][1])
    assert torch.equal(r["synced"][0], r["synced"][1])
    assert torch.equal(r["synced"][0].float(), ((r["drifted"][0] + r["drifted"][1]) / 2).float())
    assert torch.equal(r["val"][0], r["val"][1])  # the same model on every rank: the same validation losses
    saved = torch.cat(
        [v.reshape(-1).double() for k, v in r["model_pt"].items() if k.endswith(("running_mean", "running_var"))]
    )
    assert torch.equal(saved, r["end"][0])  # model.pt holds the average (the momentum copies' included)
