"""``met2net consolidate`` on real 2-rank DeepSpeed checkpoints (ZeRO 1, 2, 3; stage one, then stage two): the
weights equal DeepSpeed's own ``zero_to_fp32`` bitwise (frozen parameters included, in fp32), a model loaded from the
file predicts bitwise what the live engine predicted, training goes on from it, and damaged or mismatched rank files
are refused by name with the output left untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from met2net.config import load_config
from met2net.consolidate import (
    ConsolidateError,
    consolidate,
    fit_to_model,
    load_consolidated,
    verify_consolidated,
)
from met2net.consolidate.format import model_config
from met2net.model.met2net import Met2Net
from tests.distributed.harness import ROOT, run_ranks
from tests.e2e.test_train_cli import TINY

SCHEDULES = ("stage1", "stage2")


def tiny_config(run_dir: str, schedule: str, *extra: str):
    return load_config(
        ROOT / "configs/quickstart.yaml",
        [
            *TINY,
            f"run.dir={run_dir}",
            f"training.schedule={schedule}",
            "training.progress=false",
            "training.max_steps=2",
            "training.val_every=2",
            "training.val_batches=1",
            "deepspeed.stage3_param_persistence_threshold=0",
            *extra,
        ],
    )


def batch(cfg) -> torch.Tensor:
    m = cfg.model
    generator = torch.Generator().manual_seed(123)
    return torch.randn(2, m.in_frames, len(m.variables), *m.grid, generator=generator)


def train_both_stages(rank: int, world: int, run_dir: str, extra: tuple[str, ...]) -> dict:
    """Stage one then stage two (from stage one's checkpoint) on every rank; after each, the live engine's forecast
    of a fixed batch (every rank takes part: ZeRO-3 gathers in the forward)."""
    from met2net.training.build import build_trainer

    predictions = {}
    for schedule in SCHEDULES:
        cfg = tiny_config(run_dir, schedule, *extra)
        trainer = build_trainer(cfg)
        trainer.train()  # ends with a validation (statistics averaged over the ranks) and a checkpoint
        trainer.sync_batchnorm()
        predictions[schedule] = trainer.model.predict(batch(cfg))
        del trainer
    return predictions


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda z: f"zero{z}")
def trained(request, tmp_path_factory) -> dict:
    """One 2-rank run per ZeRO stage; ZeRO-2 trains with bf16 autocast (fp32 weights, as always)."""
    stage = request.param
    root = tmp_path_factory.mktemp(f"zero{stage}")
    extra = (f"deepspeed.zero_stage={stage}", *(["training.precision=bf16"] if stage == 2 else []))
    ranks = run_ranks(train_both_stages, 2, root, str(root / "run"), extra)
    return {"stage": stage, "root": root, "run": root / "run", "live": ranks[0], "extra": extra}


def checkpoint_of(trained: dict, schedule: str) -> Path:
    return trained["run"] / "checkpoints" / schedule / "step_2"


@pytest.mark.distributed
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_weights_equal_deepspeeds_converter_frozen_ones_in_fp32(trained, schedule, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = checkpoint_of(trained, schedule)
    out = consolidate(ckpt, tmp_path / "all", weights="all")
    ours, meta = load_consolidated(out)
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), ckpt.name)
    gathered = torch.load(ckpt / "model.pt", weights_only=True)
    params = {n for n, _ in Met2Net(model_config(meta["config"])).named_parameters()}
    assert set(ours) == set(gathered) and params <= set(ours)
    assert all(ours[k].dtype == torch.float32 for k in params)
    # DeepSpeed returns every trained parameter, and the frozen ones from ZeRO-2 on (ZeRO-1: none; FACTS.md)
    compared = [k for k in params if k in theirs]
    assert len(compared) == (len(params) if trained["stage"] >= 2 else len(compared)) and compared
    assert [k for k in compared if not torch.equal(ours[k], theirs[k].float())] == []
    assert [k for k in compared if theirs[k].dtype != ours[k].dtype] == []
    frozen = [k for k in params if k not in theirs]
    assert (frozen != []) == (trained["stage"] == 1)
    assert [k for k in ours if not torch.equal(ours[k], gathered[k])] == []  # and the live weights, buffers too
    assert meta["source"]["zero_stage"] == trained["stage"] and meta["source"]["world_size"] == 2
    assert meta["schedule"] == schedule and meta["step"] == 2 and verify_consolidated(out) == []


@pytest.mark.distributed
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_model_from_the_file_predicts_what_the_live_engine_predicted(trained, schedule, tmp_path):
    state, meta = load_consolidated(consolidate(checkpoint_of(trained, schedule), tmp_path / "inference"))
    assert meta["weights"] == "inference"
    cfg = model_config(meta["config"])
    model = Met2Net(cfg, with_copies=meta["weights"] == "all")
    model.load_state_dict(state)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran
    try:
        forecast = model.predict(batch(tiny_config("unused", schedule)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(forecast, trained["live"][schedule])


@pytest.mark.distributed
def test_training_goes_on_from_a_consolidated_file(trained, tmp_path):
    """Stage two on one process (the plain-PyTorch engine) from stage one's inference weights: the codecs it freezes
    are the file's, the Translator's copy starts equal to its trained twin."""
    from met2net.train import run_train

    out = consolidate(checkpoint_of(trained, "stage1"), tmp_path / "stage1")
    state, _ = load_consolidated(out)
    cfg = tiny_config(str(tmp_path / "next"), "stage2", f"training.init_from={out}")
    assert run_train(cfg).exit_code == 0
    after = torch.load(tmp_path / "next/checkpoints/stage2/step_2/model.pt", weights_only=True)
    codecs = [k for k in state if k.startswith(("encoders_q", "decoders_q"))]
    assert codecs and [k for k in codecs if not torch.equal(after[k], state[k])] == []
    assert not torch.equal(after["translator_q.conv_in.weight"], state["translator_q.conv_in.weight"])  # it trained
    start = fit_to_model(state, after.keys())
    assert torch.equal(start["translator_k.conv_in.weight"], state["translator_q.conv_in.weight"])


def resign(ckpt: Path) -> None:
    """meta.json's checksums and COMPLETE recomputed, as if the files had been written that way: what is left to
    find a mismatched rank file is consolidation's own checks."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {
        str(p.relative_to(ckpt)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name not in ("meta.json", "COMPLETE")
    }
    text = json.dumps(meta, indent=2)
    (ckpt / "meta.json").write_text(text)
    (ckpt / "COMPLETE").write_text(hashlib.sha256(text.encode()).hexdigest())


def damaged_copy(trained: dict, tmp_path: Path, name: str) -> Path:
    ckpt = tmp_path / name / "step_2"
    shutil.copytree(checkpoint_of(trained, "stage1"), ckpt)
    return ckpt


def rank_file(stage: int, kind: str, rank: int) -> str:
    if kind == "model" and stage < 3:
        return "mp_rank_00_model_states.pt"
    return f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt"


@pytest.mark.distributed
def test_damaged_or_mismatched_rank_files_are_refused_by_name_and_out_is_left_alone(trained, tmp_path):
    stage = trained["stage"]
    out = consolidate(checkpoint_of(trained, "stage1"), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    optim1 = rank_file(stage, "optim", 1)

    truncated = damaged_copy(trained, tmp_path, "truncated")
    data = (truncated / optim1).read_bytes()
    (truncated / optim1).write_bytes(data[: len(data) // 2])
    with pytest.raises(ConsolidateError, match=rf"damaged checkpoint: {optim1} was altered or truncated"):
        consolidate(truncated, out)

    incomplete = damaged_copy(trained, tmp_path, "incomplete")
    (incomplete / "COMPLETE").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete .no COMPLETE marker"):
        consolidate(incomplete, out)

    missing = damaged_copy(trained, tmp_path, "missing")
    (missing / optim1).unlink()
    resign(missing)
    with pytest.raises(ConsolidateError, match=rf"but {optim1} is missing"):
        consolidate(missing, out)

    extra = damaged_copy(trained, tmp_path, "extra")
    shutil.copy(extra / optim1, extra / rank_file(stage, "optim", 2))
    with pytest.raises(ConsolidateError, match=rf"also holds {rank_file(stage, 'optim', 2)}"):
        consolidate(extra, out)

    swapped = damaged_copy(trained, tmp_path, "swapped")  # rank 0's and rank 1's files exchanged, re-signed
    optim0 = rank_file(stage, "optim", 0)
    (swapped / optim0).rename(swapped / "tmp")
    (swapped / optim1).rename(swapped / optim0)
    (swapped / "tmp").rename(swapped / optim1)
    resign(swapped)
    if stage < 3:
        with pytest.raises(ConsolidateError, match=rf"{optim0}: holds another part of the flat weights"):
            consolidate(swapped, out)
    other = damaged_copy(trained, tmp_path, "other_world")  # rank 0's file as a run on 4 ranks would write it
    as_if_four_ranks(other / optim0)
    resign(other)
    with pytest.raises(ConsolidateError, match=rf"{optim0}: written at ZeRO-{stage} on 4 rank"):
        consolidate(other, out)

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["out", "truncated", "incomplete", "missing", "extra", "swapped", "other_world"]
    )  # no partial output left behind


def as_if_four_ranks(path: Path) -> None:
    """Rewrite an optimizer file as rank 0 of 4 would have written it: half the fp32 partition, partition count 4."""
    import deepspeed  # noqa: F401 - the file's pickle names DeepSpeed classes

    state = torch.load(path, weights_only=False)
    inner = state["optimizer_state_dict"]
    key = "fp32_flat_groups" if "fp32_flat_groups" in inner else "single_partition_of_fp32_groups"
    inner[key] = [g[: g.numel() // 2].clone() for g in inner[key]]
    inner["partition_count"] = [4] if isinstance(inner["partition_count"], list) else 4
    torch.save(state, path)


def train_stage_one(rank: int, world: int, run_dir: str, extra: tuple[str, ...]) -> torch.Tensor:
    """Stage one on every rank; the live engine's forecast of the fixed batch after it."""
    from met2net.training.build import build_trainer

    cfg = tiny_config(run_dir, "stage1", *extra)
    trainer = build_trainer(cfg)
    trainer.train()
    trainer.sync_batchnorm()
    return trainer.model.predict(batch(cfg))


@pytest.mark.distributed
def test_a_zero0_deepspeed_checkpoint_of_2_ranks_consolidates(tmp_path):
    """ZeRO-0 under DeepSpeed keeps the whole module (and optimizer) in mp_rank_00_model_states.pt: the file holds
    exactly those weights and the gathered model.pt's, and a model from it predicts bitwise what the engine did."""
    live = run_ranks(train_stage_one, 2, tmp_path, str(tmp_path / "run"), ("deepspeed.zero_stage=0",))[0]
    ckpt = tmp_path / "run/checkpoints/stage1/step_2"
    out = consolidate(ckpt, tmp_path / "all", weights="all")
    ours, meta = load_consolidated(out)
    assert (meta["source"]["engine"], meta["source"]["zero_stage"], meta["source"]["world_size"]) == ("deepspeed", 0, 2)
    module = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)["module"]  # DeepSpeed's own file
    params = {n for n, _ in Met2Net(model_config(meta["config"])).named_parameters()}
    assert params <= set(module) and [k for k in params if not torch.equal(ours[k], module[k].float())] == []
    gathered = torch.load(ckpt / "model.pt", weights_only=True)
    assert set(ours) == set(gathered) and [k for k in ours if not torch.equal(ours[k], gathered[k])] == []
    assert all(ours[k].dtype == torch.float32 for k in params) and verify_consolidated(out) == []
    state, inference = load_consolidated(consolidate(ckpt, tmp_path / "inference"))
    model = Met2Net(model_config(inference["config"]), with_copies=False)
    model.load_state_dict(state)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran
    try:
        assert torch.equal(model.predict(batch(tiny_config("unused", "stage1"))), live)
    finally:
        torch.set_num_threads(threads)
