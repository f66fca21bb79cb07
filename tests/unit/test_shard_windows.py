import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from met2net.data.sampler import ShardedSampler
from met2net.data.shards import ShardMeta, shard_entry, write_index, write_shard
from met2net.data.windows import ShardWindowDataset, _spacing, batch_loader

C, H, W = 3, 4, 5
IN, OUT = 3, 2
HOUR = np.timedelta64(1, "h")
MEAN = np.array([1.0, -2.0, 0.5])
STD = np.array([2.0, 0.5, 3.0])
GAP = (np.datetime64("2011-01-01T19", "h"), np.datetime64("2011-01-02T01", "h"))  # last before, first after


def hours(start: str, n: int) -> np.ndarray:
    return np.datetime64(start, "h") + np.arange(n) * HOUR


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Three yearly shards of 40 hourly frames: 2010 runs into 2011 without a break, 2011 has a 5-hour gap,
    2012 is missing before 2013."""
    directory = tmp_path_factory.mktemp("shards")
    meta = ShardMeta(
        channels=["u10", "t2m", "r"],
        units=["m s**-1", "K", "%"],
        long_names=["u", "t", "r"],
        levels=[-1, -1, 1000],
        lat=np.linspace(-60.0, 60.0, H),
        lon=72.0 * np.arange(W),
    )
    times = {
        "2010": hours("2010-12-30T08", 40),
        "2011": np.concatenate([hours("2011-01-01T00", 20), hours(str(GAP[1]), 20)]),
        "2013": hours("2013-01-01T00", 40),
    }
    rng = np.random.default_rng(0)
    fields = {name: rng.standard_normal((len(t), C, H, W)).astype(np.float32) for name, t in times.items()}
    entries = [
        shard_entry(directory / f"{n}.h5", t, write_shard(directory / f"{n}.h5", t, fields[n], meta))
        for n, t in times.items()
    ]
    write_index(directory, meta, 1, entries)
    return directory, np.concatenate(list(times.values())), np.concatenate(list(fields.values()))


def dataset(directory, years=(2010, 2011, 2013), stride=1, step_hours=1, channels=None) -> ShardWindowDataset:
    pick = slice(None) if channels is None else channels
    return ShardWindowDataset(
        directory, list(years), IN, OUT, stride, step_hours, mean=MEAN[pick], std=STD[pick], channels=channels
    )


def valid_starts(times: np.ndarray, years, step_hours: int) -> set:
    """Every start whose IN + OUT frames, step_hours apart on the 00 UTC-aligned axis, all exist in those years."""
    have = {t for t in times.tolist() if t.year in years}
    step = step_hours * HOUR.item()
    return {t for t in have if (t.hour % step_hours == 0) and all(t + j * step in have for j in range(IN + OUT))}


def normalised(times: np.ndarray, fields: np.ndarray, wanted: np.ndarray, channels=None) -> np.ndarray:
    pick = slice(None) if channels is None else channels
    block = fields[np.searchsorted(times, wanted)][:, pick]
    return (block - MEAN[pick, None, None].astype(np.float32)) / STD[pick, None, None].astype(np.float32)


@pytest.mark.parametrize("step_hours", [1, 2, 3])
@pytest.mark.parametrize("years", [(2010, 2011, 2013), (2011,), (2010, 2013)])
def test_windows_are_exactly_the_gap_free_ones_with_normalised_source_values(source, years, step_hours):
    directory, times, fields = source
    ds = dataset(directory, years, step_hours=step_hours)
    assert len(ds) == len(valid_starts(times, years, step_hours)) > 0
    assert {ds.times(i)[0].item() for i in range(len(ds))} == valid_starts(times, years, step_hours)
    for i in range(len(ds)):
        t = ds.times(i)
        np.testing.assert_array_equal(t, t[0] + np.arange(IN + OUT) * step_hours * HOUR)
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.float32 and x.shape == (IN, C, H, W) and y.shape == (OUT, C, H, W)
        np.testing.assert_allclose(torch.cat([x, y]).numpy(), normalised(times, fields, t), rtol=1e-6, atol=1e-6)


def test_no_window_crosses_the_gap_or_a_missing_year_but_one_may_cross_new_year(source):
    directory, _, _ = source
    ds = dataset(directory)
    spans = [ds.times(i)[[0, -1]] for i in range(len(ds))]
    assert not any(first <= GAP[0] and last >= GAP[1] for first, last in spans)
    years = {(first.item().year, last.item().year) for first, last in spans}
    assert years == {(2010, 2010), (2010, 2011), (2011, 2011), (2013, 2013)}
    only_2011 = dataset(directory, [2011])
    assert all(t.item().year == 2011 for i in range(len(only_2011)) for t in only_2011.times(i))


def test_step_hours_take_every_kth_frame_aligned_to_00_utc(source):
    directory, times, _ = source
    ds = dataset(directory, [2013], step_hours=2)
    np.testing.assert_array_equal(ds.times(0), hours("2013-01-01T00", 9)[::2])
    assert all((ds.times(i).astype(np.int64) % 2 == 0).all() for i in range(len(ds)))


def test_stride_counts_frames_of_the_subsampled_axis(source):
    directory, _, _ = source
    every, strided = dataset(directory, [2013], step_hours=2), dataset(directory, [2013], stride=3, step_hours=2)
    np.testing.assert_array_equal(strided.starts, every.starts[::3])
    assert np.diff([strided.times(i)[0] for i in range(len(strided))]).tolist() == [np.timedelta64(6, "h")] * (
        len(strided) - 1
    )


def test_channels_select_and_order_shard_channels(source):
    directory, times, fields = source
    ds = dataset(directory, channels=[2, 0])
    x, y = ds[5]
    assert x.shape == (IN, 2, H, W)
    np.testing.assert_allclose(
        torch.cat([x, y]).numpy(), normalised(times, fields, ds.times(5), [2, 0]), rtol=1e-6, atol=1e-6
    )


def test_bad_channels_or_statistics_are_refused(source):
    directory, _, _ = source
    with pytest.raises(ValueError, match=r"channels \[3\]"):
        ShardWindowDataset(directory, [2010], IN, OUT, 1, mean=MEAN[:1], std=STD[:1], channels=[3])
    with pytest.raises(ValueError, match="expected 2 entries"):
        ShardWindowDataset(directory, [2010], IN, OUT, 1, mean=MEAN, std=STD, channels=[0, 1])


def test_dataset_pickles_without_open_files(source):
    directory, _, _ = source
    ds = dataset(directory)
    ds[0]
    copy = pickle.loads(pickle.dumps(ds))
    for a, b in zip(copy[7], ds[7]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_workers_return_the_batches_of_the_main_process(source):
    directory, _, _ = source
    ds = dataset(directory)
    sampler = ShardedSampler(len(ds), rank=0, world_size=1, seed=1)
    serial = list(DataLoader(ds, batch_size=4, sampler=sampler))
    parallel = list(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2))
    assert len(serial) == len(parallel) > 1
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        torch.testing.assert_close(xp, xs, rtol=0, atol=0)
        torch.testing.assert_close(yp, ys, rtol=0, atol=0)


def train(loader, sampler, epochs: range, stop_after: int | None = None) -> list[torch.Tensor]:
    """The loop's side of the resume protocol: set_epoch, then advance by every batch actually taken."""
    taken = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for x, y in loader:
            sampler.advance(len(x))
            taken.append(torch.cat([x, y], dim=1))
            if len(taken) == stop_after:
                return taken
    return taken


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_mid_epoch_with_workers_and_ranks_never_overlap(source, num_workers):
    directory, _, _ = source
    ds, batch_size, k, epochs = dataset(directory, [2013]), 3, 3, range(2)

    def build(rank, state=None):
        sampler = ShardedSampler(len(ds), rank, 2, seed=9)
        if state is not None:
            sampler.load_state_dict(state)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers), sampler

    shares = []
    for rank in range(2):
        reference = train(*build(rank), epochs)
        loader, sampler = build(rank)
        head = train(loader, sampler, epochs, stop_after=k)
        state = sampler.state_dict()
        assert state["position"] == k * batch_size
        loader, sampler = build(rank, state)
        tail = train(loader, sampler, range(state["epoch"], epochs.stop))
        assert len(head + tail) == len(reference)
        for got, want in zip(head + tail, reference):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        sampler.set_epoch(0)
        shares.append(set(sampler.indices().tolist()))
    assert not shares[0] & shares[1] and len(shares[0]) == len(ds) // 2


# -- the loader's batches against a plain read of the shards ---------------------------------------------------------

# odd grid sizes so that numpy's vector loops have remainders; statistics that are not powers of two, so every
# division rounds
GRID = (4, 7, 13)
GRID_MEAN = np.array([271.3, -0.7, 3.1e-3, 101325.0])
GRID_STD = np.array([13.7, 0.3, 7.9e-4, 977.0])


@pytest.fixture(scope="module", params=[None, "gzip"], ids=["memory-mapped", "gzip"])
def holey(request, tmp_path_factory):
    """Two hourly shards, the first running into the second (windows span both files), the second missing 03:00
    (with step_hours 2 a window's frames are then unequally spaced in the files); contiguous shards are
    memory-mapped by the reader, gzip ones read through h5py."""
    directory = tmp_path_factory.mktemp("holey")
    c, h, w = GRID
    meta = ShardMeta(
        channels=["t", "u", "q", "sp"],
        units=["K", "m s**-1", "1", "Pa"],
        long_names=["t", "u", "q", "sp"],
        levels=[850, 850, 850, -1],
        lat=np.linspace(-80.0, 80.0, h),
        lon=np.linspace(0.0, 360.0, w, endpoint=False),
    )
    after = hours("2011-01-01T00", 31)
    times = {"2010": hours("2010-12-31T06", 18), "2011": np.delete(after, 3)}
    rng = np.random.default_rng(5)
    entries = []
    for name, t in times.items():
        fields = (GRID_MEAN[:, None, None] + GRID_STD[:, None, None] * rng.standard_normal((len(t), c, h, w))).astype(
            np.float32
        )
        path = directory / f"{name}.h5"
        entries.append(shard_entry(path, t, write_shard(path, t, fields, meta, compression=request.param)))
    write_index(directory, meta, 1, entries)
    return directory


def plain_read(directory) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of every shard in index order, read whole with h5py, and the frames' hours."""
    fields, times = [], []
    for entry in json.loads((directory / "index.json").read_text())["shards"]:
        with h5py.File(directory / entry["file"], "r") as f:
            fields.append(f["fields"][()])
            times.append(f["time"][()].astype("datetime64[h]"))
    return np.concatenate(fields), np.concatenate(times)


@pytest.mark.parametrize(
    "step_hours, channels, num_workers",
    [(1, None, 0), (2, None, 0), (1, [3, 0, 2], 0), (2, [1], 0), (2, [2, 1], 2)],
)
@pytest.mark.parametrize("normalised", [True, False])
def test_loader_batches_equal_a_plain_h5py_read_normalised_in_float32(
    holey, step_hours, channels, num_workers, normalised
):
    """normalised=False: the raw windows, which the dataset's Normalise (what the training loop on a GPU applies on
    the device) turns into the same normalised batches, bit for bit."""
    pick = slice(None) if channels is None else channels
    ds = ShardWindowDataset(
        holey,
        [2010, 2011],
        IN,
        OUT,
        1,
        step_hours,
        mean=GRID_MEAN[pick],
        std=GRID_STD[pick],
        channels=channels,
        normalise=normalised,
    )
    spans_files = [ds.times(j)[0].item().year != ds.times(j)[-1].item().year for j in range(len(ds))]
    unequal = [len(set(np.diff(ds.frames[s : s + IN + OUT]).tolist())) > 1 for s in ds.starts]
    assert any(spans_files) and any(unequal) == (step_hours == 2)  # both read paths are exercised
    fields, times = plain_read(holey)
    mean = GRID_MEAN[pick].astype(np.float32)[:, None, None]
    std = GRID_STD[pick].astype(np.float32)[:, None, None]
    sampler = ShardedSampler(len(ds), rank=0, world_size=1, seed=3)
    order = sampler.indices()
    batches = list(batch_loader(ds, sampler, 4, drop_last=False, num_workers=num_workers))
    assert sum(len(x) for x, _ in batches) == len(ds) > 8
    for k, (x, y) in enumerate(batches):
        windows = [fields[np.searchsorted(times, ds.times(j))][:, pick] for j in order[4 * k : 4 * k + 4]]
        want = torch.from_numpy((np.stack(windows) - mean) / std)
        assert x.dtype == y.dtype == want.dtype == torch.float32
        if not normalised:
            raw = torch.from_numpy(np.stack(windows))
            assert torch.equal(x, raw[:, :IN]) and torch.equal(y, raw[:, IN:])
            x, y = ds.normalise(x), ds.normalise(y)
        assert torch.equal(x, want[:, :IN]) and torch.equal(y, want[:, IN:])


@pytest.mark.parametrize("length", [1, 2, 3, 24])
def test_the_spacing_worked_out_once_is_each_windows_own(length):
    """`_spacing` (all windows at once) equals the per-window check it replaced: the common gap of the window's frame
    indices, or 0 where they are not equally spaced (frame indices with gaps of 1, 2 and 6 mixed at random)."""
    rng = np.random.default_rng(length)
    frames = np.cumsum(rng.choice([1, 1, 1, 2, 6], size=400))
    starts = np.arange(frames.size - length + 1)
    expected = []
    for s in starts:
        gaps = np.diff(frames[s : s + length])
        expected.append(1 if gaps.size == 0 else int(gaps[0]) if (gaps == gaps[0]).all() else 0)
    spacing = _spacing(frames, starts, length)
    np.testing.assert_array_equal(spacing, expected)
    assert (spacing == 0).any() == (length > 2)
