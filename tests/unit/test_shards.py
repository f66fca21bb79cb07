import errno
import hashlib
import json
import multiprocessing as mp
import os
import pickle

import h5py
import numpy as np
import pytest

from met2net.data import atomic, shards
from met2net.data.shards import (
    ShardError,
    ShardMeta,
    ShardReader,
    read_index,
    sha256_file,
    shard_entry,
    shard_is_valid,
    verify_shards,
    write_index,
    write_shard,
)

C, H, W = 3, 4, 8


def make_meta() -> ShardMeta:
    return ShardMeta(
        channels=["u10", "t2m", "r"],
        units=["m s**-1", "K", "%"],
        long_names=["10m_u_component_of_wind", "2m_temperature", "relative_humidity"],
        levels=[-1, -1, 1000],
        lat=np.linspace(-78.75, 78.75, H),
        lon=45.0 * np.arange(W),
    )


def hours(start: str, n: int) -> np.ndarray:
    return np.datetime64(start, "h") + np.arange(n) * np.timedelta64(1, "h")


def frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, C, H, W)).astype(np.float32)


@pytest.fixture
def meta():
    return make_meta()


@pytest.fixture
def shard_dir(tmp_path, meta):
    """Two shards (written out of time order) and their index: 6 frames of 2010, 5 of 2011."""
    data = {"2011": (hours("2011-01-01T00", 5), frames(5, 1)), "2010": (hours("2010-12-31T18", 6), frames(6, 0))}
    entries = [
        shard_entry(tmp_path / f"{name}.h5", t, write_shard(tmp_path / f"{name}.h5", t, x, meta))
        for name, (t, x) in data.items()
    ]
    write_index(tmp_path, meta, 1, entries)
    return tmp_path, data


def test_round_trip(tmp_path, meta):
    t, x = hours("2010-01-01T00", 7), frames(7, 0)
    sha = write_shard(tmp_path / "2010.h5", t, x, meta)
    assert sha == sha256_file(tmp_path / "2010.h5") and len(sha) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2010.h5"]
    with h5py.File(tmp_path / "2010.h5", "r") as f:
        assert f["fields"].dtype == np.float32 and f["fields"].chunks is None  # contiguous: memory-mapped reads
        assert f["fields"].compression is None
        np.testing.assert_array_equal(f["fields"][()], x)
        assert f["time"].dtype == np.int64
        np.testing.assert_array_equal(f["time"][()].astype("datetime64[h]"), t)
        assert f["time"][0] == 40 * 365 * 24 + 10 * 24  # 1970..2009 has 10 leap days
        assert f["lat"].dtype == f["lon"].dtype == np.float64
        np.testing.assert_array_equal(f["lat"][()], meta.lat)
        np.testing.assert_array_equal(f["lon"][()], meta.lon)
        assert f.attrs["format"] == 1
        assert list(f.attrs["channels"]) == meta.channels and list(f.attrs["units"]) == meta.units
        assert list(f.attrs["long_names"]) == meta.long_names and list(f.attrs["levels"]) == [-1, -1, 1000]


def test_index_content(shard_dir, meta):
    directory, data = shard_dir
    raw = json.loads((directory / "index.json").read_text())
    assert raw == read_index(directory)
    assert raw["format"] == 1 and raw["time_step_hours"] == 1
    assert raw["channels"] == meta.channels and raw["units"] == meta.units
    assert raw["long_names"] == meta.long_names and raw["levels"] == [-1, -1, 1000]
    assert raw["lat"] == meta.lat.tolist() and raw["lon"] == meta.lon.tolist()
    assert raw["shards"] == [
        {
            "file": "2010.h5",
            "first_time": "2010-12-31T18:00",
            "last_time": "2010-12-31T23:00",
            "num_times": 6,
            "sha256": sha256_file(directory / "2010.h5"),
        },
        {
            "file": "2011.h5",
            "first_time": "2011-01-01T00:00",
            "last_time": "2011-01-01T04:00",
            "num_times": 5,
            "sha256": sha256_file(directory / "2011.h5"),
        },
    ]
    assert not list(directory.glob("*.tmp"))


def test_index_refuses_missing_shard_and_overlap(tmp_path, meta):
    t = hours("2010-01-01T00", 3)
    entry = shard_entry(tmp_path / "a.h5", t, write_shard(tmp_path / "a.h5", t, frames(3, 0), meta))
    with pytest.raises(ShardError, match="b.h5.*not found"):
        write_index(tmp_path, meta, 1, [entry, {**entry, "file": "b.h5"}])
    write_shard(tmp_path / "b.h5", t, frames(3, 0), meta)
    with pytest.raises(ShardError, match="a.h5.*overlaps b.h5"):
        write_index(tmp_path, meta, 1, [entry, {**entry, "file": "b.h5"}])
    assert not (tmp_path / "index.json").exists()


def expected(data) -> np.ndarray:
    return np.concatenate([data["2010"][1], data["2011"][1]])


def test_reader_reads_across_shard_boundary(shard_dir):
    directory, data = shard_dir
    with ShardReader(directory, verify=True) as reader:
        np.testing.assert_array_equal(reader.times, np.concatenate([data["2010"][0], data["2011"][0]]))
        assert len(reader) == 11 and reader.meta.channels == ["u10", "t2m", "r"]
        whole = expected(data)
        out = reader.read(3, 6)
        assert out.shape == (6, C, H, W) and out.dtype == np.float32
        np.testing.assert_array_equal(out, whole[3:9])
        np.testing.assert_array_equal(reader.read(0, 11), whole)
        np.testing.assert_array_equal(reader.read(6, 2), whole[6:8])
        assert reader.read(11, 0).shape == (0, C, H, W)
        np.testing.assert_array_equal(reader.read(1, 5, step=2), whole[1:10:2])  # strided, across the boundary
        np.testing.assert_array_equal(reader.read(4, 1, step=7), whole[4:5])
        with pytest.raises(IndexError):
            reader.read(1, 6, step=2)
        with pytest.raises(IndexError, match="11 frames"):
            reader.read(8, 4)


def test_reader_survives_pickling(shard_dir):
    directory, data = shard_dir
    reader = ShardReader(directory)
    reader.read(0, 1)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handles == {}
    np.testing.assert_array_equal(clone.read(4, 4), expected(data)[4:8])
    reader.close()
    clone.close()


def _read_in_child(reader, conn):
    inherited = dict(reader._handles)
    out = reader.read(2, 8)
    conn.send(
        (
            out,
            all(reader._handles[i] is not f for i, f in inherited.items() if i in reader._handles),
            [f.id.valid for f in inherited.values()],
        )
    )
    conn.close()


def test_reader_in_forked_child_reopens_files(shard_dir):
    directory, data = shard_dir
    reader = ShardReader(directory)
    reader.read(0, 11)  # the parent holds open handles on both shards when it forks
    parent_handles = dict(reader._handles)
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_read_in_child, args=(reader, send))
    child.start()
    out, fresh, inherited_valid = recv.recv()
    child.join(timeout=30)
    assert child.exitcode == 0
    np.testing.assert_array_equal(out, expected(data)[2:10])
    assert fresh and inherited_valid == [False, False]  # the child closed its copies and opened its own
    assert reader._handles == parent_handles and all(f.id.valid for f in parent_handles.values())
    np.testing.assert_array_equal(reader.read(5, 3), expected(data)[5:8])
    reader.close()


def test_verify_detects_truncated_file(shard_dir):
    directory, _ = shard_dir
    verify_shards(directory)
    path = directory / "2011.h5"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ShardError, match=r"2011\.h5: checksum mismatch") as err:
        verify_shards(directory)
    assert "2010.h5" not in str(err.value) and "re-run met2net data convert" in str(err.value)
    with pytest.raises(ShardError, match="checksum mismatch"):
        ShardReader(directory, verify=True)


def test_verify_detects_flipped_byte(shard_dir):
    directory, _ = shard_dir
    path = directory / "2010.h5"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    expected_sha = read_index(directory)["shards"][0]["sha256"]
    with pytest.raises(ShardError, match=r"2010\.h5: checksum mismatch") as err:
        verify_shards(directory)
    assert expected_sha[:12] in str(err.value) and sha256_file(path)[:12] in str(err.value)


def test_verify_detects_missing_file(shard_dir):
    directory, _ = shard_dir
    (directory / "2011.h5").unlink()
    with pytest.raises(ShardError, match=r"2011\.h5: missing"):
        verify_shards(directory)


def test_shard_is_valid(shard_dir):
    directory, _ = shard_dir
    first, second = read_index(directory)["shards"]
    assert shard_is_valid(directory, first) and shard_is_valid(directory, second)
    assert not shard_is_valid(directory, {**first, "sha256": "0" * 64})
    (directory / "2011.h5").unlink()
    assert not shard_is_valid(directory, second)


@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_values_are_refused(tmp_path, meta, bad, kind):
    t, x = hours("2010-03-01T00", 10), frames(10, 0)
    x[7, 0, 1, 1] = bad
    x[5, 2, 3, 0] = bad  # earliest time wins, whatever the channel order
    with pytest.raises(ShardError, match=rf"2010\.h5: channel 'r' has {kind} values at 2010-03-01T05:00"):
        write_shard(tmp_path / "2010.h5", t, x, meta)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_file(tmp_path, meta, monkeypatch):
    path = tmp_path / "2010.h5"
    seen = {}

    def crash(f, *args):
        seen["tmp"] = any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        f.create_dataset("partial", data=np.zeros(3))
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "_fill", crash)
    with pytest.raises(KeyboardInterrupt):
        write_shard(path, hours("2010-01-01T00", 2), frames(2, 0), meta)
    assert seen["tmp"] and list(tmp_path.iterdir()) == []


def test_failed_rename_keeps_previous_shard(tmp_path, meta, monkeypatch):
    path = tmp_path / "2010.h5"
    t = hours("2010-01-01T00", 2)
    sha = write_shard(path, t, frames(2, 0), meta)
    monkeypatch.setattr(shards.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, t, frames(2, 1), meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2010.h5"] and sha256_file(path) == sha


@pytest.mark.parametrize("hint", [True, False], ids=["writeback-hint", "no-sync_file_range"])
def test_a_shard_is_hashed_then_flushed_then_renamed(tmp_path, meta, monkeypatch, hint):
    """The checksum is taken from the complete temporary file, which is then fsynced (the writeback hint never
    replaces it) before it is renamed into place; without ``sync_file_range`` (not Linux) the same happens."""
    if not hint:
        monkeypatch.setattr(atomic, "_SYNC_FILE_RANGE", None)
    events, fsync, replace, sha256_of = [], atomic.os.fsync, atomic.os.replace, atomic._sha256_of

    def named(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def logged_sha256(f):
        events.append(("sha256", named(f.fileno())))
        return sha256_of(f)

    def logged_fsync(fd):
        events.append(("fsync", named(fd)))
        fsync(fd)

    def logged_replace(a, b):
        events.append(("replace", str(a)))
        replace(a, b)

    monkeypatch.setattr(atomic, "_sha256_of", logged_sha256)
    monkeypatch.setattr(atomic.os, "fsync", logged_fsync)
    monkeypatch.setattr(atomic.os, "replace", logged_replace)
    path = tmp_path / "2010.h5"
    sha = write_shard(path, hours("2010-01-01T00", 3), frames(3, 0), meta)
    tmp = events[0][1]
    assert atomic.TEMPORARY.match(os.path.basename(tmp)) and os.path.dirname(tmp) == str(tmp_path)
    assert events == [("sha256", tmp), ("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() and [p.name for p in tmp_path.iterdir()] == ["2010.h5"]


def test_a_failed_flush_leaves_nothing(tmp_path, meta, monkeypatch):
    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="2010.h5"):
        write_shard(tmp_path / "2010.h5", hours("2010-01-01T00", 2), frames(2, 0), meta)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "times, fields, match",
    [
        (hours("2010-01-01T00", 3), np.zeros((3, C, H, W + 1), np.float32), r"fields: expected shape .*\(3, 3, 4, 8\)"),
        (hours("2010-01-01T00", 3), np.zeros((3, C, H, W), np.int32), "fields: expected a float32"),
        (np.arange(3), np.zeros((3, C, H, W), np.float32), "times: expected a non-empty 1-D datetime64"),
        (hours("2010-01-01T00", 3)[::-1], np.zeros((3, C, H, W), np.float32), "times: expected strictly increasing"),
        (
            np.datetime64("2010-01-01T00:30") + np.arange(3) * np.timedelta64(1, "h"),
            np.zeros((3, C, H, W), np.float32),
            "times: expected whole hours",
        ),
    ],
)
def test_input_validation_names_argument(tmp_path, meta, times, fields, match):
    with pytest.raises(ValueError, match=match):
        write_shard(tmp_path / "x.h5", times, fields, meta)
    assert list(tmp_path.iterdir()) == []


def test_meta_validation():
    m = make_meta()
    with pytest.raises(ValueError, match="ShardMeta.units: expected 3 entries"):
        ShardMeta(m.channels, m.units[:2], m.long_names, m.levels, m.lat, m.lon)
    with pytest.raises(ValueError, match="ShardMeta.lat: expected finite, strictly ascending"):
        ShardMeta(m.channels, m.units, m.long_names, m.levels, m.lat[::-1], m.lon)
    with pytest.raises(ValueError, match=r"ShardMeta.lon: expected values in \[0, 360\)"):
        ShardMeta(m.channels, m.units, m.long_names, m.levels, m.lat, m.lon - 180)
    assert ShardMeta(m.channels, m.units, m.long_names, [None, None, 1000], m.lat, m.lon).levels == [-1, -1, 1000]


def test_reader_refuses_missing_index(tmp_path):
    with pytest.raises(ShardError, match="index.json: not found"):
        ShardReader(tmp_path)


def test_compressed_shards_are_read_through_h5py(tmp_path, meta):
    data = {"2010": (hours("2010-12-31T18", 6), frames(6, 0)), "2011": (hours("2011-01-01T00", 5), frames(5, 1))}
    entries = [
        shard_entry(tmp_path / f"{n}.h5", t, write_shard(tmp_path / f"{n}.h5", t, x, meta, compression="gzip"))
        for n, (t, x) in data.items()
    ]
    write_index(tmp_path, meta, 1, entries)
    with h5py.File(tmp_path / "2010.h5") as f:
        assert f["fields"].chunks == (1, C, H, W) and f["fields"].compression == "gzip"
    with ShardReader(tmp_path) as reader:
        whole = expected(data)
        np.testing.assert_array_equal(reader.read(2, 7), whole[2:9])
        np.testing.assert_array_equal(reader.read(1, 5, step=2), whole[1:10:2])
        assert not isinstance(reader._array(0), np.ndarray)  # h5py's dataset, not a memory map
