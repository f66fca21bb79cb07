"""Splits from the config: a split too short for one window is an error that says why, never an empty split."""

import numpy as np
import pytest
import torch

from met2net.cli import main
from met2net.data.datasets import SplitTooShort, build_splits
from met2net.data.sampler import ShardedSampler
from met2net.data.shards import ShardMeta, shard_entry, write_index, write_shard
from met2net.data.stats import Moments, write_stats
from met2net.data.windows import ShardWindowDataset
from met2net.train import run_train
from met2net.training import build
from met2net.training.stages import SCHEDULES
from tests.conftest import small_config

CHANNELS = ["u10", "t2m", "r"]
H, W = 8, 16


def hours(start: str, offsets) -> np.ndarray:
    return np.datetime64(start, "h") + np.asarray(offsets) * np.timedelta64(1, "h")


@pytest.fixture
def shards(tmp_path):
    """2010: 40 hourly frames; 2011: 3 frames; 2012: 9 frames in runs of 3 with gaps between them."""
    meta = ShardMeta(
        CHANNELS, ["m s**-1", "K", "%"], CHANNELS, [-1, -1, 1000], np.linspace(-80, 80, H), 22.5 * np.arange(W)
    )
    times = {
        2010: hours("2010-01-01T00", range(40)),
        2011: hours("2011-01-01T00", range(3)),
        2012: hours("2012-01-01T00", [0, 1, 2, 5, 6, 7, 10, 11, 12]),
    }
    rng = np.random.default_rng(0)
    entries = []
    for year, t in times.items():
        path = tmp_path / f"{year}.h5"
        fields = rng.standard_normal((t.size, 3, H, W)).astype(np.float32)
        entries.append(shard_entry(path, t, write_shard(path, t, fields, meta)))
    write_index(tmp_path, meta, 1, entries)
    write_stats(tmp_path, Moments.of(np.ones((2, 3, H, W)), channel_axis=1), CHANNELS, [2010])
    return tmp_path


def cfg(path, *overrides):
    return small_config(
        "data.source=shards", f"data.path={path}", "data.train_years=[2010]", "data.test_years=[]", *overrides
    )


def test_splits_long_enough_build(shards):
    splits = build_splits(cfg(shards, "data.val_years=[2012]", "model.in_frames=1", "model.out_frames=1"))
    assert len(splits.train) == 39 and len(splits.val) == 6


def test_a_validation_split_shorter_than_a_window_is_an_error(shards):
    with pytest.raises(
        SplitTooShort,
        match=r"the validation split \(data.val_years \[2011\]\) has 3 frames "
        r"\(2011-01-01T00:00 \.\. 2011-01-01T02:00, every 1 h\) in .*, fewer than one window of 4 frames "
        r"\(model.in_frames 2 \+ model.out_frames 2\)",
    ):
        build_splits(cfg(shards, "data.val_years=[2011]"))


def test_gaps_and_missing_years_are_named(shards):
    with pytest.raises(
        SplitTooShort, match=r"validation split .* has 9 frames .*longest run without a gap is 3 frames"
    ):
        build_splits(cfg(shards, "data.val_years=[2012]"))
    with pytest.raises(
        SplitTooShort, match=r"validation split \(data.val_years \[2016\]\) has 0 frames \(every 1 h\) in "
    ):
        build_splits(cfg(shards, "data.val_years=[2016]"))
    short = ["data.val_years=[2011]", "model.in_frames=1", "model.out_frames=1", "data.test_years=[2016]"]
    with pytest.raises(SplitTooShort, match=r"the test split \(data.test_years \[2016\]\) has 0 frames .*convert them"):
        build_splits(cfg(shards, *short))


def test_synthetic_split_too_short():
    with pytest.raises(
        SplitTooShort, match=r"training split .* has 18 frames .*every 3000 h\) in the built-in dataset"
    ):
        build_splits(small_config("data.step_hours=3000"))


def test_training_refuses_it_with_exit_code_2(shards, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(cfg(shards, "data.val_years=[2011]", "data.test_years=[]").to_yaml())
    assert main(["train", str(config), f"run.dir={tmp_path / 'run'}", "training.max_steps=1"]) == 2
    assert "validation split (data.val_years [2011]) has 3 frames" in capsys.readouterr().err


@pytest.mark.parametrize("in_loader", [True, False])
def test_training_gets_the_windows_normalised(shards, tmp_path, monkeypatch, in_loader):
    """The train loop's batches are the windows normalised with the training statistics, whether the loader
    normalises them (the CPU's way) or gives them raw and the loop normalises them on its device (a GPU's way,
    forced here on the CPU): the same batch, bit for bit."""
    rng = np.random.default_rng(1)
    write_stats(shards, Moments.of(rng.normal(3.0, 2.0, (4, 3, H, W)), channel_axis=1), CHANNELS, [2010])
    c = cfg(
        shards,
        "data.val_years=[2012]",
        "model.in_frames=1",
        "model.out_frames=1",
        "training.schedule=end_to_end",
        "training.max_steps=1",
        "training.batch_size=4",
        "training.val_every=0",
        "training.progress=false",
        f"run.dir={tmp_path / 'run'}",
    )
    built = []

    def splits_as_asked(config, normalise_in_loader=True):
        built.append(build_splits(config, normalise_in_loader=in_loader))
        return built[-1]

    monkeypatch.setattr(build, "build_splits", splits_as_asked)
    seen = []
    forward = SCHEDULES["end_to_end"].forward
    monkeypatch.setattr(
        SCHEDULES["end_to_end"], "forward", lambda s, m, x, y: seen.append((x, y)) or forward(s, m, x, y)
    )
    assert run_train(c).finished
    (splits,) = built
    assert splits.train.normalised == in_loader and (splits.normalise is None) == in_loader
    sampler = ShardedSampler(len(splits.train), rank=0, world_size=1, seed=c.run.seed)
    sampler.set_epoch(0)
    normalising = ShardWindowDataset(
        shards, [2010], 1, 1, 1, mean=splits.mean, std=splits.std, channels=splits.train.channels
    )
    x, y = normalising[sampler.indices()[:4].tolist()]
    assert splits.std.min() > 1.5 and torch.equal(seen[0][0], x) and torch.equal(seen[0][1], y)
