"""Resume at another world size or ZeRO stage (DeepSpeed ZeRO 1/2/3, universal checkpoint): the loaded state equals
the checkpoint exactly — trained weights, momentum copies, BatchNorm statistics, optimizer — and the run goes on to
its end."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from met2net.training import universal
from tests.distributed.test_resume import interrupt_after_first_checkpoint, losses
from tests.distributed.test_train_launchers import BIN, launch, records

TWO = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", sys.executable]
ONE = [sys.executable]  # DeepSpeed on one process: zero_stage > 0
COMMON = [
    "training.schedule=implicit",
    "training.checkpoint_every=3",
    "training.log_every=1",
    "model.drop_path=0",
    "deepspeed.stage3_param_persistence_threshold=0",
]


def loaded_state(run: Path, dst: Path, launcher: list[str], *extra: str) -> Path:
    """Resume ``run``'s step-3 checkpoint with ``launcher`` and stop at once (``max_steps=3``): the run writes step 3
    again from exactly what it has just loaded."""
    interrupt_after_first_checkpoint(run, dst, "implicit")
    launch(launcher, dst, *COMMON, *extra, "training.max_steps=3")
    return dst / "checkpoints/implicit/step_3"


def universal_tensors(ckpt: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """Every per-parameter file of ``ckpt``'s universal form (fp32 weights, Adam moments, step): the optimizer
    state written out independently of the world size."""
    shutil.copytree(ckpt, scratch, ignore=shutil.ignore_patterns(universal.UNIVERSAL))
    zero = universal.convert(scratch) / "zero"
    out = {}
    for f in sorted(zero.glob("*/*.pt")):
        value = torch.load(f, weights_only=False)
        out[f"{f.parent.name}/{f.name}"] = value["param"] if isinstance(value, dict) else value
    return out


def assert_same_state(original: Path, loaded: Path, world_size: int, scratch: Path, trained_only: bool = False) -> None:
    """``trained_only``: compare the optimizer state of trained parameters only (a ZeRO-1/2 universal checkpoint
    also lists the frozen ones, a ZeRO-3 one does not)."""
    a = torch.load(original / "model.pt", weights_only=True)
    b = torch.load(loaded / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # trained, momentum copies, BatchNorm statistics
    assert not torch.equal(a["translator_k.conv_in.weight"], a["translator_q.conv_in.weight"])  # copies lag
    assert any(k.endswith("running_var") for k in a)
    opt_a, opt_b = universal_tensors(original, scratch / "a"), universal_tensors(loaded, scratch / "b")
    if trained_only:
        trained = {k.split("/")[0] for k in opt_a if k.endswith("/exp_avg.pt")}
        opt_a, opt_b = ({k: v for k, v in opt.items() if k.split("/")[0] in trained} for opt in (opt_a, opt_b))
    assert any(k.endswith("/exp_avg_sq.pt") for k in opt_a) and opt_a.keys() == opt_b.keys()
    assert [k for k in opt_a if not torch.equal(opt_a[k], opt_b[k])] == []  # the optimizer state, exactly
    meta = json.loads((loaded / "meta.json").read_text())
    assert meta["world_size"] == world_size and meta["step"] == 3


@pytest.mark.distributed
@pytest.mark.parametrize("stage, to_the_end", [(1, False), (2, True), (3, True)])
def test_two_ranks_resume_on_one(tmp_path, stage, to_the_end):
    extra = [f"deepspeed.zero_stage={stage}"]
    whole = tmp_path / "whole"
    launch(TWO, whole, *COMMON, *extra)
    loaded = loaded_state(whole, tmp_path / "loaded", ONE, *extra)
    assert_same_state(whole / "checkpoints/implicit/step_3", loaded, 1, tmp_path / "scratch")
    if not to_the_end:
        return
    resumed = tmp_path / "resumed"
    interrupt_after_first_checkpoint(whole, resumed, "implicit")
    launch(ONE, resumed, *COMMON, *extra)
    assert [s for s, _ in losses(resumed)] == [1, 2, 3, 4, 5, 6]
    # Steps 4–6 see the same global batches, but BatchNorm normalises over 4 samples instead of 2 per rank, and
    # the RNG streams are new: close, not bitwise.
    assert [v for _, v in losses(resumed)[3:]] == pytest.approx([v for _, v in losses(whole)[3:]], rel=0.1)
    lr = [[r["lr"] for r in records(run) if r["split"] == "train"] for run in (whole, resumed)]
    assert lr[0] == lr[1]  # the LR schedule went on where it stopped
    [resume] = [r for r in records(resumed) if r["split"] == "resume"]
    assert resume["mode"] == "universal" and resume["saved_world_size"] == 2 and resume["step"] == 3
    step3 = resumed / "checkpoints/implicit/step_3"
    made = step3 / universal.UNIVERSAL
    assert made.is_dir() and not (step3 / f".{universal.UNIVERSAL}.partial").exists()
    stamp = made.stat().st_mtime_ns
    assert universal.convert(step3) == made and made.stat().st_mtime_ns == stamp  # made once, then reused
    meta = json.loads((resumed / "checkpoints/implicit/step_6/meta.json").read_text())
    assert meta["world_size"] == 1 and meta["engine"] == "deepspeed" and meta["zero_stage"] == stage


@pytest.mark.distributed
def test_one_rank_resumes_on_two_under_zero3(tmp_path):
    extra = ["deepspeed.zero_stage=3"]
    whole = tmp_path / "whole"
    launch(ONE, whole, *COMMON, *extra)
    loaded = loaded_state(whole, tmp_path / "loaded", TWO, *extra)
    assert_same_state(whole / "checkpoints/implicit/step_3", loaded, 2, tmp_path / "scratch")
    assert (loaded / "rng_rank1.pt").exists()


@pytest.mark.distributed
def test_zero0_moves_to_another_world_size_without_conversion(tmp_path):
    """ZeRO-0 keeps the whole optimizer state on every rank: DeepSpeed loads it as written at any world size."""
    whole = tmp_path / "whole"
    launch(ONE, whole, *COMMON, "deepspeed.zero_stage=0", "deepspeed.gradient_accumulation=2")  # DeepSpeed, 1 rank
    loaded = loaded_state(whole, tmp_path / "loaded", TWO, "deepspeed.zero_stage=0")
    original = whole / "checkpoints/implicit/step_3"
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (original, loaded))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    opt_a, opt_b = (
        torch.load(d / "mp_rank_00_model_states.pt", weights_only=False)["optimizer"] for d in (original, loaded)
    )
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]
    assert all(
        torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b["state"][i][k]))
        for i, state in opt_a["state"].items()
        for k, v in state.items()
    )
    [resume] = [r for r in records(tmp_path / "loaded") if r["split"] == "resume"]
    assert resume["mode"] == "same" and resume["saved_world_size"] == 1


@pytest.mark.distributed
@pytest.mark.parametrize(
    "saved, now, launcher", [(1, 3, TWO), (3, 2, ONE)], ids=["zero1-to-zero3", "zero3-to-zero2-on-1-rank"]
)
def test_resume_moves_between_zero_stages(tmp_path, saved, now, launcher):
    whole = tmp_path / "whole"
    launch(TWO, whole, *COMMON, f"deepspeed.zero_stage={saved}")
    loaded = loaded_state(whole, tmp_path / "loaded", launcher, f"deepspeed.zero_stage={now}")
    world = 2 if launcher is TWO else 1
    assert_same_state(whole / "checkpoints/implicit/step_3", loaded, world, tmp_path / "scratch", trained_only=True)
    resumed = tmp_path / "resumed"
    interrupt_after_first_checkpoint(whole, resumed, "implicit")
    launch(launcher, resumed, *COMMON, f"deepspeed.zero_stage={now}")
    assert [s for s, _ in losses(resumed)] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in losses(resumed)[3:]] == pytest.approx([v for _, v in losses(whole)[3:]], rel=0.1)
    [resume] = [r for r in records(resumed) if r["split"] == "resume"]
    assert resume["mode"] == "universal" and resume["step"] == 3
    meta = json.loads((resumed / "checkpoints/implicit/step_6/meta.json").read_text())
    assert meta["zero_stage"] == now and meta["world_size"] == world
