"""netCDF → HDF5 conversion on real files (and a real `mpirun -n 2`)."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from met2net.data import atomic
from met2net.data.convert import convert
from met2net.data.netcdf import write_weatherbench_tree
from met2net.data.shards import ShardError, read_index, verify_shards
from met2net.data.synthetic import generate
from met2net.errors import UserError
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]
GRID, HOURS, YEARS = (16, 32), 24, [2010, 2011]
VARS = ["u10", "t2m", "r"]


def cfg(*overrides):
    return small_config(
        "model.variables=[u10,t2m,r]",
        "model.grid=[16,32]",
        "data.train_years=[2010]",
        "data.val_years=[2011]",
        "data.test_years=[]",
        *overrides,
    )


@pytest.fixture
def tree(tmp_path):
    write_weatherbench_tree(tmp_path / "nc", YEARS, grid=GRID, variables=VARS, hours=HOURS)
    return tmp_path / "nc"


def fields(directory: Path, year: int) -> np.ndarray:
    with h5py.File(directory / f"{year}.h5") as f:
        return f["fields"][:]


def traced_peak(run) -> int:
    """The peak of Python and numpy allocations (tracemalloc) while ``run()`` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def year_files(
    root: Path, name: str, values: np.ndarray, times, lat, lon, groups: list[np.ndarray], first: int = 0
) -> None:
    """``values`` (time, lat, lon) of variable ``name`` as files ``root/name/<k>.nc``, file ``first`` + k holding
    frames ``groups[k]`` (the names sort out of time order from 10 on)."""
    (root / name).mkdir(exist_ok=True)
    for k, frames in enumerate(groups, start=first):
        data = {name: (("time", "lat", "lon"), values[frames])}
        xr.Dataset(data, coords={"time": times[frames], "lat": lat, "lon": lon}).to_netcdf(root / name / f"{k}.nc")


def year_config(grid: tuple[int, int], names: list[str]):
    """2004 trains, 2005 validates, each variable from ``<name>/*.nc``."""
    entries = ", ".join(f"{{name: {n}, file_glob: {n}/*.nc, var: {n}}}" for n in names)
    return small_config(
        f"model.variables=[{', '.join(names)}]",
        f"model.grid=[{grid[0]},{grid[1]}]",
        f"data.variables=[{entries}]",
        "data.train_years=[2004]",
        "data.val_years=[2005]",
        "data.test_years=[]",
    )


def rewrite(path: Path, change) -> None:
    with xr.open_dataset(path) as ds:
        new = change(ds.load())
    path.unlink()
    new.to_netcdf(path)


def test_round_trip_equals_the_source(tree, tmp_path):
    out = tmp_path / "shards"
    convert(tree, cfg(), out, progress=False)
    index = read_index(out)
    assert [e["file"] for e in index["shards"]] == ["2010.h5", "2011.h5"]
    assert index["channels"] == VARS and index["levels"] == [-1, -1, 1000] and index["time_step_hours"] == 1
    for year in YEARS:
        src = generate([year], grid=GRID, variables=VARS, hours=HOURS)
        np.testing.assert_array_equal(fields(out, year), np.stack([src.fields[v] for v in VARS], axis=1))
    verify_shards(out)


def test_each_shard_is_flushed_before_its_rename_and_the_renames_before_the_index(tree, tmp_path, monkeypatch):
    """fsync of every shard's temporary file right before its rename; the directory once, after the last shard's
    rename and before index.json is renamed into place (then once more for the index's own rename)."""
    events, fsync, replace = [], atomic.os.fsync, atomic.os.replace

    def logged_fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        fsync(fd)

    def logged_replace(a, b):
        events.append(("replace", os.path.basename(b)))
        replace(a, b)

    monkeypatch.setattr(atomic.os, "fsync", logged_fsync)
    monkeypatch.setattr(atomic.os, "replace", logged_replace)
    out = tmp_path / "shards"
    convert(tree, cfg(), out, progress=False)
    names = [(kind, "TMP" if atomic.TEMPORARY.match(name) else name) for kind, name in events]
    shard = [("fsync", "TMP"), ("replace", "2010.h5"), ("fsync", "TMP"), ("replace", "2011.h5")]
    index = [("fsync", "TMP"), ("replace", "index.json"), ("fsync", "shards")]
    assert names == [*shard, ("fsync", "shards"), *index]
    verify_shards(out)


def test_shards_are_hashed_flushed_and_renamed_off_the_thread_that_reads_the_next_year(tree, tmp_path, monkeypatch):
    """The hashing, flush and rename of each shard run on the publisher's thread (while the next year is read and
    written), in order, and index.json holds the sha256 of the files as renamed."""
    threads, replace, hash_of = [], atomic.os.replace, atomic._sha256_of

    def logged_replace(a, b):
        threads.append(("rename", os.path.basename(b), threading.current_thread().name))
        replace(a, b)

    def logged_hash(f):  # the temporary file ".<year>.h5.<pid>-<hex>.tmp", open
        threads.append(("hash", os.path.basename(f.name).split(".")[1], threading.current_thread().name))
        return hash_of(f)

    monkeypatch.setattr(atomic.os, "replace", logged_replace)
    monkeypatch.setattr(atomic, "_sha256_of", logged_hash)
    out = tmp_path / "shards"
    convert(tree, cfg(), out, progress=False)
    shards = [(what, name, thread) for what, name, thread in threads if "2010" in name or "2011" in name]
    assert [(what, name) for what, name, _ in shards] == [
        ("hash", "2010"),
        ("rename", "2010.h5"),
        ("hash", "2011"),
        ("rename", "2011.h5"),
    ]
    assert all(thread.startswith("met2net-publish") for *_, thread in shards)
    assert [t for what, name, t in threads if name == "index.json"] == [threading.main_thread().name]
    verify_shards(out)  # every shard's sha256 in index.json is the file's


def test_the_next_year_is_opened_and_read_while_a_shard_is_written(tree, tmp_path, monkeypatch):
    """The sources are read on a thread of their own (met2net/data/ahead.py): while the main thread writes the last
    block of 2010's shard, 2011 is opened from its files, so a shard's per-file work (xarray's selections on one
    side, h5py's file and dataset creation on the other) overlaps the other side's reading and decompressing. (It
    was once opened only after 2010's shard was complete.)"""
    import met2net.data.convert as conversion

    opened_2011, seen = threading.Event(), []
    open_year, setitem = conversion.open_year, h5py.Dataset.__setitem__

    def logged_open_year(year, *args):
        if year == 2011:
            opened_2011.set()
        return open_year(year, *args)

    def logged_setitem(self, key, value):
        if self.name == "/fields" and ".2010.h5." in self.file.filename and key[1] == len(VARS) - 1:
            seen.append((opened_2011.wait(30), threading.current_thread() is threading.main_thread()))
        setitem(self, key, value)

    monkeypatch.setattr(conversion, "open_year", logged_open_year)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", logged_setitem)
    out = tmp_path / "shards"
    convert(tree, cfg(), out, progress=False)
    assert seen == [(True, True)]  # one block per channel here, written on the main thread
    assert [e["file"] for e in read_index(out)["shards"]] == ["2010.h5", "2011.h5"]
    verify_shards(out)


def test_where_hdf5_must_not_run_on_two_threads_the_sources_are_read_on_the_writers(tree, tmp_path, monkeypatch):
    """When netCDF4 and h5py share an HDF5 library built without thread-safety (one built from source, or an HPC
    module's), reading on one thread while writing on another could corrupt its state: the conversion then reads
    on the thread that writes, and writes the same bytes (index.json's checksums equal the threaded run's).

    The answer "they share an unsafe library" is a fake (here each package has its own copy: the next test checks
    how that is told); the conversion, netCDF4 and h5py are real."""
    import met2net.data.convert as conversion

    readers, blocks = set(), conversion._blocks

    def logged_blocks(*args):
        for item in blocks(*args):
            readers.add(threading.current_thread().name)
            yield item

    monkeypatch.setattr(conversion, "_blocks", logged_blocks)
    convert(tree, cfg(), tmp_path / "threaded", progress=False)
    assert readers == {"met2net-read-ahead"}
    readers.clear()
    monkeypatch.setattr(conversion, "hdf5_from_two_threads_is_safe", lambda: False)
    convert(tree, cfg(), tmp_path / "one", progress=False)
    assert readers == {threading.main_thread().name}
    sums = [[e["sha256"] for e in read_index(tmp_path / d)["shards"]] for d in ("threaded", "one")]
    assert sums[0] == sums[1] and len(sums[0]) == 2


def test_the_hdf5_libraries_of_h5py_and_netcdf4_are_told_apart():
    """With pip's wheels each package maps its own renamed copy of HDF5, so the two threads may call them at once;
    the file names that count as the library (not its high-level part)."""
    from met2net.data.netcdf import _is_hdf5_library, hdf5_from_two_threads_is_safe

    names = ["libhdf5.so.310", "libhdf5_serial.so.103", "libhdf5_openmpi.so.103", "libhdf5-9e18f0c6.so.320.0.0"]
    assert all(_is_hdf5_library(n) for n in names)
    assert not any(_is_hdf5_library(n) for n in ["libhdf5_hl.so.310", "libhdf5_serial_hl.so.100", "libnetcdf.so.22"])
    safe = hdf5_from_two_threads_is_safe()  # imports both packages
    maps = Path("/proc/self/maps").read_text().split()
    copies = {os.path.realpath(m) for m in maps if _is_hdf5_library(os.path.basename(m))}
    assert len(copies) >= 2, f"expected h5py's and netCDF4's own HDF5 (pip's wheels), found {copies}"
    assert safe


def test_a_shard_whose_flush_fails_in_the_background_fails_the_conversion_and_leaves_no_trace(
    tree, tmp_path, monkeypatch
):
    """A full disk found by the publisher's fsync of 2011's shard: the conversion fails naming that shard, no
    temporary file stays, 2011.h5 and index.json are never written (2010.h5, flushed before, stays valid).

    The failing fsync is a fake, standing in for storage that reports the error only when flushing (network and
    parallel file systems); what is checked is the conversion's handling of it on the publisher's thread. A real
    full disk (a tmpfs that fills up, which fails the write itself) is
    `tests/unit/test_storage_faults.py::test_a_full_disk_during_data_convert_names_the_shard_and_keeps_the_written_ones`."""
    fsync = atomic.os.fsync

    def failing_fsync(fd):
        if ".2011.h5." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    out = tmp_path / "shards"
    with pytest.raises(OSError, match=r"No space left on device.*2011\.h5"):
        convert(tree, cfg(), out, progress=False)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".convert")) == ["2010.h5"]


def test_a_publisher_that_failed_refuses_the_next_file_and_removes_it(tmp_path, monkeypatch):
    """After a failed flush the publisher refuses the next file, naming the first one's failure, and removes it.
    The failing fsync is a fake (a disk that fails every flush): the publisher's bookkeeping is what is checked."""

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="a.bin"), atomic.Publisher() as publisher:
        atomic.atomic_write(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"a"), publisher=publisher)
        with pytest.raises(OSError, match="a.bin"):
            while True:  # until the first file's failure is seen by the next submit
                atomic.atomic_write(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"b"), publisher=publisher)
    assert list(tmp_path.iterdir()) == []


def test_flipped_latitude_and_shifted_longitude_give_the_same_shards(tree, tmp_path):
    convert(tree, cfg(), tmp_path / "a", progress=False)
    for path in tree.rglob("*.nc"):
        rewrite(
            path,
            lambda ds: (
                ds.isel(lat=slice(None, None, -1)).assign_coords(lon=(((ds.lon + 180) % 360) - 180)).sortby("lon")
            ),
        )
    convert(tree, cfg(), tmp_path / "b", progress=False)
    for year in YEARS:
        np.testing.assert_array_equal(fields(tmp_path / "a", year), fields(tmp_path / "b", year))
    a, b = read_index(tmp_path / "a"), read_index(tmp_path / "b")
    assert a["lat"] == b["lat"] and a["lon"] == b["lon"]


def test_missing_variable_is_named_and_nothing_is_written(tree, tmp_path):
    for p in (tree / "2m_temperature").glob("*2011*"):
        p.unlink()
    with pytest.raises(ValueError, match=r"variable 't2m' has no data for 2011 \(file_glob '2m_temperature/\*.nc'\)"):
        convert(tree, cfg(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "index.json").exists()
    assert not list((tmp_path / "out").glob("*2011*"))


def test_mismatched_grids_name_the_files(tree, tmp_path):
    path = next((tree / "2m_temperature").glob("*2010*"))
    rewrite(path, lambda ds: ds.isel(lon=slice(0, 16)))
    with pytest.raises(ValueError, match=r"2m_temperature_2010.*\('t2m'\).*different grids \(lon: 16 points"):
        convert(tree, cfg(), tmp_path / "out", progress=False)


def test_time_gaps_are_errors_unless_allowed(tree, tmp_path):
    for path in tree.rglob("*2010*.nc"):
        rewrite(path, lambda ds: ds.drop_isel(time=[5, 6]))
    with pytest.raises(ValueError, match=r"gap in time between 2010-01-01T04 and 2010-01-01T07.*data.allow_gaps"):
        convert(tree, cfg(), tmp_path / "out", progress=False)
    convert(tree, cfg("data.allow_gaps=true"), tmp_path / "out", progress=False)
    assert read_index(tmp_path / "out")["shards"][0]["num_times"] == HOURS - 2


def test_missing_values_are_refused_naming_file_variable_count_and_place(tree, tmp_path):
    path = next((tree / "relative_humidity").glob("*2011*"))
    first = np.datetime64("2011-01-01T03")
    rewrite(path, lambda ds: ds.assign(r=ds.r.where((ds.time != first) | (ds.lat > 0))))  # southern half, 1 frame
    with pytest.raises(
        ValueError,
        match=r"relative_humidity_2011_11\.25deg\.nc'\]: variable 'r' \(r\) has 256 missing \(NaN or inf\) values in "
        r"2011, in 1 of 24 frames, the first at 2011-01-01T03:00, lat -84\.375, lon 0; nothing written.*fillna",
    ):
        convert(tree, cfg(), tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("2011.h5*")) and not (tmp_path / "out" / "index.json").exists()


def test_rerun_keeps_valid_shards_and_rewrites_altered_ones(tree, tmp_path):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    with open(out / "2011.h5", "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"\xff" * 8)
    with pytest.raises(ShardError, match="2011.h5: checksum mismatch"):
        verify_shards(out)
    convert(tree, cfg(), out, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert after["2010.h5"] == before["2010.h5"] and after["2011.h5"] != before["2011.h5"]
    verify_shards(out)


def test_subsample_halves_the_grid(tree, tmp_path):
    convert(tree, cfg("data.subsample=2", "model.grid=[8,16]"), tmp_path / "out", progress=False)
    assert fields(tmp_path / "out", 2010).shape == (HOURS, 3, 8, 16)
    assert read_index(tmp_path / "out")["lat"][0] == pytest.approx(-84.375)


def test_two_mpi_ranks_write_the_same_shards(tree, tmp_path):
    (tmp_path / "c.yaml").write_text(cfg().to_yaml())
    convert(tree, cfg(), tmp_path / "one", progress=False)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(Path(sys.executable).parent / "mpirun"),
        "-n",
        "2",
        sys.executable,
        "-m",
        "met2net.cli",
        "data",
        "convert",
        str(tree),
        "-c",
        str(tmp_path / "c.yaml"),
        "-o",
        str(tmp_path / "two"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "rank 0/2: wrote" in out.stderr and "rank 1/2: wrote" in out.stderr
    one = json.loads((tmp_path / "one/index.json").read_text())
    two = json.loads((tmp_path / "two/index.json").read_text())
    assert [e["file"] for e in two["shards"]] == ["2010.h5", "2011.h5"]
    for year in YEARS:
        np.testing.assert_array_equal(fields(tmp_path / "one", year), fields(tmp_path / "two", year))
    assert one["channels"] == two["channels"] and one["lat"] == two["lat"]


# -- re-converting into an existing directory ------------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_index_records_the_sources_and_settings(tree, tmp_path):
    convert(tree, cfg(), tmp_path / "out", progress=False)
    record = read_index(tmp_path / "out")["conversion"]
    assert record["settings"]["years"] == YEARS and record["settings"]["data.subsample"] == 1
    assert [c.split("=")[0] for c in record["settings"]["channels"]] == VARS
    path = next(tree.rglob("2m_temperature_2010_*.nc"))
    entry = next(s for s in record["sources"] if s["path"] == str(path.relative_to(tree)))
    assert entry["size"] == path.stat().st_size and entry["mtime_ns"] == path.stat().st_mtime_ns


def test_unchanged_rerun_is_a_noop(tree, tmp_path):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    (out / "stats.json").write_text("{}")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    convert(tree, cfg(), out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_changed_settings_are_refused_naming_the_change_and_force(tree, tmp_path):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"(?s)data\.subsample: 1 → 2.*--force"):
        convert(tree, cfg("data.subsample=2", "model.grid=[8,16]"), out, progress=False)
    with pytest.raises(ValueError, match=r"(?s)channels: .*r=r from relative_humidity/\*\.nc level 1000.* → "):
        convert(tree, cfg("model.variables=[u10,t2m]"), out, progress=False)
    assert snapshot(out) == before


def test_changed_source_file_is_named(tree, tmp_path):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    path = next(tree.rglob("2m_temperature_2011_*.nc"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"(?s)1 source file changed.*2m_temperature/2m_temperature_2011.*--force"):
        convert(tree, cfg(), out, progress=False)


def test_hashed_sources_are_compared_by_content(tree, tmp_path):
    """With --hash a source touched or copied with the same bytes is the same source (the record is renewed, no shard
    rewritten); one whose bytes changed is named, even at the same size and time."""
    from met2net.cli import main

    out = tmp_path / "out"
    (tmp_path / "c.yaml").write_text(cfg().to_yaml())
    assert main(["data", "convert", str(tree), "-o", str(out), "-c", str(tmp_path / "c.yaml"), "--hash"]) == 0
    recorded = {s["path"]: s["sha256"] for s in read_index(out)["conversion"]["sources"]}
    path = next(tree.rglob("2m_temperature_2011_*.nc"))
    assert recorded[str(path.relative_to(tree))] == hashlib.sha256(path.read_bytes()).hexdigest()
    shards_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes
    with pytest.raises(ValueError, match=r"2m_temperature_2011_11\.25deg\.nc \(modified\)"):
        convert(tree, cfg(), out, progress=False)  # without hashes the time decides
    convert(tree, cfg(), out, progress=False, hashes=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == shards_before
    renewed = {s["path"]: s for s in read_index(out)["conversion"]["sources"]}[str(path.relative_to(tree))]
    assert renewed["mtime_ns"] == stat.st_mtime_ns + 10**9
    convert(tree, cfg(), out, progress=False)  # the renewed record holds the new time: the same without hashes
    rewrite(path, lambda ds: ds.assign(t2m=ds.t2m + 1))  # other values, at the recorded time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(
        ValueError,
        match=r"1 source file changed: 2m_temperature/2m_temperature_2011_11\.25deg\.nc "
        r"\(content changed\)",
    ):
        convert(tree, cfg(), out, progress=False, hashes=True)


def test_cli_refuses_with_nonzero_exit(tree, tmp_path, capsys):
    from met2net.cli import main

    (tmp_path / "a.yaml").write_text(cfg().to_yaml())
    (tmp_path / "b.yaml").write_text(cfg("model.variables=[u10,t2m]").to_yaml())
    args = ["data", "convert", str(tree), "-o", str(tmp_path / "out"), "-c"]
    assert main([*args, str(tmp_path / "a.yaml")]) == 0
    assert main([*args, str(tmp_path / "b.yaml")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "b.yaml"), "--force"]) == 0
    assert read_index(tmp_path / "out")["channels"] == ["u10", "t2m"]


def test_force_rebuilds_beside_the_old_set_and_drops_the_statistics(tree, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    (out / "stats.json").write_text("{}")
    convert(tree, cfg("model.variables=[u10,t2m]"), out, progress=False, force=True)
    assert read_index(out)["channels"] == ["u10", "t2m"] and fields(out, 2010).shape[1] == 2
    assert sorted(p.name for p in out.iterdir()) == ["2010.h5", "2011.h5", "index.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nc", "out"]
    assert "stats.json" in capsys.readouterr().err
    verify_shards(out)


def test_failed_forced_reconvert_leaves_the_old_shards_byte_identical(tree, tmp_path):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    (out / "stats.json").write_text("{}")
    before = snapshot(out)
    path = next((tree / "2m_temperature").glob("*2011*"))
    rewrite(path, lambda ds: ds.assign(t2m=ds.t2m.where(ds.time != np.datetime64("2011-01-01T03"))))
    with pytest.raises(ValueError, match=r"variable 't2m' \(t2m\) has 512 missing \(NaN or inf\) values in 2011"):
        convert(tree, cfg("model.variables=[u10,t2m]"), out, progress=False, force=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nc", "out"]


def test_stale_temporaries_are_removed_and_reported(tree, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    (out / ".2010.h5.4242-0123abcd.tmp").write_bytes(b"partial")
    (tmp_path / ".out.rebuild-4242-0123abcd").mkdir()
    (tmp_path / ".out.rebuild-4242-0123abcd" / "2010.h5").write_bytes(b"partial")
    (out / "notes.tmp").write_text("not ours")
    capsys.readouterr()
    convert(tree, cfg(), out, progress=False)
    err = capsys.readouterr().err
    assert ".2010.h5.4242-0123abcd.tmp" in err and ".out.rebuild-4242-0123abcd" in err
    assert sorted(p.name for p in out.iterdir()) == ["2010.h5", "2011.h5", "index.json", "notes.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nc", "out"]


def test_a_run_stopped_mid_swap_restores_the_old_set(tree, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    before = snapshot(out)
    out.rename(tmp_path / ".out.replaced-4242-0123abcd")
    convert(tree, cfg(), out, progress=False)
    assert "restored" in capsys.readouterr().err
    assert snapshot(out) == before


def test_index_of_an_older_converter_is_kept_when_its_channels_match_else_needs_force(tree, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tree, cfg(), out, progress=False)
    record = read_index(out)["conversion"]
    index = json.loads((out / "index.json").read_text())
    del index["conversion"]
    (out / "index.json").write_text(json.dumps(index))
    shards_before = {p.name: p.read_bytes() for p in out.glob("*.h5")}
    with pytest.raises(ValueError, match=r"(?s)no record of its sources.*--force"):
        convert(tree, cfg("model.variables=[u10,t2m]"), out, progress=False)
    convert(tree, cfg(), out, progress=False)
    assert "no record of its sources (older met2net)" in capsys.readouterr().err
    assert read_index(out)["conversion"] == record
    assert {p.name: p.read_bytes() for p in out.glob("*.h5")} == shards_before


# -- coordinate names -------------------------------------------------------------------------------------------------

AXES = ("time", "lat", "lon", "level")


def renamed(names: dict[str, str], level_in_pa: bool = False):
    def change(ds):
        ds = ds.rename({k: v for k, v in names.items() if k in ds.variables})
        level = names.get("level")
        if level_in_pa and level in ds.variables:
            ds = ds.assign_coords({level: (level, ds[level].values * 100.0, {"units": "Pa"})})
        return ds

    return change


def same_shards(a: Path, b: Path) -> None:
    for year in YEARS:
        np.testing.assert_array_equal(fields(a, year), fields(b, year))
    ia, ib = read_index(a), read_index(b)
    assert (ia["lat"], ia["lon"], ia["shards"], ia["levels"]) == (ib["lat"], ib["lon"], ib["shards"], ib["levels"])


@pytest.mark.parametrize(
    "names, level_in_pa",
    [
        (("TIME", "LAT", "LON", "lev"), False),
        (("t", "y", "x", "plev"), True),
        (("timestep", "latitude", "longitude", "isobaricInhPa"), False),
        (("valid_time", "lat", "lon", "level"), False),
    ],
)
def test_common_coordinate_names_give_the_same_shards(tree, tmp_path, names, level_in_pa):
    convert(tree, cfg(), tmp_path / "a", progress=False)
    for path in tree.rglob("*.nc"):
        rewrite(path, renamed(dict(zip(AXES, names)), level_in_pa))
    convert(tree, cfg(), tmp_path / "b", progress=False)
    same_shards(tmp_path / "a", tmp_path / "b")


def test_data_coords_names_any_layout_and_an_unknown_one_is_described(tree, tmp_path):
    convert(tree, cfg(), tmp_path / "a", progress=False)
    for path in tree.rglob("*.nc"):
        rewrite(path, renamed({"time": "hours", "lat": "FNOCY", "lon": "FNOCX", "level": "level"}))
    with pytest.raises(
        ValueError,
        match=r"(?s)10m_u_component_of_wind_2010_11\.25deg\.nc: no time, lat, lon coordinate.*"
        r"coordinates \['FNOCX', 'FNOCY', 'hours'\] and dimensions \{'hours': 24, 'FNOCY': 16, 'FNOCX': 32\}"
        r".*data\.coords",
    ):
        convert(tree, cfg(), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"_2010_11\.25deg\.nc: data\.coords\.time is 'timestep', which it lacks"):
        convert(tree, cfg("data.coords={time: timestep, lat: FNOCY, lon: FNOCX}"), tmp_path / "b", progress=False)
    convert(tree, cfg("data.coords={time: hours, lat: FNOCY, lon: FNOCX}"), tmp_path / "b", progress=False)
    same_shards(tmp_path / "a", tmp_path / "b")


def test_projected_y_x_are_not_taken_for_degrees(tree, tmp_path):
    for path in tree.rglob("*.nc"):
        rewrite(path, lambda ds: renamed({"lat": "y", "lon": "x"})(ds).assign_coords(y=ds.lat.values * 1e4))
    with pytest.raises(ValueError, match=r"(?s)_2010_11\.25deg\.nc.*lat values span .* outside \[-90, 90\]"):
        convert(tree, cfg(), tmp_path / "out", progress=False)


# -- times ------------------------------------------------------------------------------------------------------------


def test_times_off_the_hour_are_refused_naming_the_file_and_the_time(tree, tmp_path):
    for path in tree.rglob("*2010*.nc"):  # all variables alike: once, the times were truncated to 00:00 silently
        rewrite(path, lambda ds: ds.assign_coords(time=ds.time + np.timedelta64(30, "m")))
    with pytest.raises(ValueError, match=r"wind_2010_11\.25deg\.nc: time 2010-01-01T00:30 is not on a whole hour"):
        convert(tree, cfg(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_sub_hourly_data_is_refused_naming_the_file(tree, tmp_path):
    half_hours = np.datetime64("2010-01-01T00:00") + np.arange(HOURS) * np.timedelta64(30, "m")
    for path in tree.rglob("*2010*.nc"):
        rewrite(path, lambda ds: ds.assign_coords(time=half_hours))
    with pytest.raises(ValueError, match=r"wind_2010_11\.25deg\.nc: time step 30 min .*shorter than an hour"):
        convert(tree, cfg(), tmp_path / "out", progress=False)


# -- sources: Zarr stores, netCDF classic, multi-year files read one year at a time -----------------------------------


def one_source(tree: Path) -> xr.Dataset:
    """All variables and years of the WeatherBench tree in one dataset, as WeatherBench 2 ships ERA5."""
    parts = []
    for path in sorted(tree.rglob("*.nc")):
        with xr.open_dataset(path) as ds:
            parts.append(ds.load())
    by_var = {}
    for ds in parts:
        by_var.setdefault(next(iter(ds.data_vars)), []).append(ds)
    return xr.merge([xr.concat(dss, "time") for dss in by_var.values()], join="outer")


def source_cfg(glob: str, *overrides):
    entries = [f"{{name: {v}, file_glob: '{glob}', var: {v}{', level: 1000' if v == 'r' else ''}}}" for v in VARS]
    return cfg(f"data.variables=[{', '.join(entries)}]", *overrides)


@pytest.mark.parametrize("kind", ["zarr_v2", "zarr_v3", "netcdf3_classic"])
def test_a_zarr_store_or_classic_netcdf_gives_the_shards_of_the_netcdf_tree(tree, tmp_path, kind):
    convert(tree, cfg(), tmp_path / "tree", progress=False)
    one = one_source(tree).isel(lat=slice(None, None, -1))  # north → south, as ERA5 stores it
    root = tmp_path / "one"
    root.mkdir()
    if kind == "netcdf3_classic":
        one.to_netcdf(root / "era5.nc", format="NETCDF3_CLASSIC")
        glob = "*.nc"
    else:
        one.to_zarr(root / "era5.zarr", zarr_format=int(kind[-1]), consolidated=kind == "zarr_v2", mode="w")
        glob = "*"  # matches the store, not the chunk and metadata files inside it
    convert(root, source_cfg(glob), tmp_path / "one_shards", progress=False)
    same_shards(tmp_path / "tree", tmp_path / "one_shards")
    [source] = read_index(tmp_path / "one_shards")["conversion"]["sources"]
    assert source["path"] == ("era5.nc" if kind == "netcdf3_classic" else "era5.zarr")


def test_a_rewritten_zarr_chunk_is_a_changed_source(tree, tmp_path):
    root = tmp_path / "one"
    one_source(tree).to_zarr(root / "era5.zarr", zarr_format=2, mode="w")
    convert(root, source_cfg("era5.zarr"), tmp_path / "out", progress=False)
    chunk = next((root / "era5.zarr" / "t2m").glob("0.*"))
    data = chunk.read_bytes()
    chunk.write_bytes(data + b"\0")  # one file of the store changes, its folder's mtime does not
    with pytest.raises(ValueError, match=r"1 source file changed: era5\.zarr \(\d+ → \d+ bytes\)"):
        convert(root, source_cfg("era5.zarr"), tmp_path / "out", progress=False)


def test_a_file_that_is_no_netcdf_is_named(tree, tmp_path):
    (tree / "2m_temperature" / "notes.nc").write_text("not a netCDF file\n")
    with pytest.raises(ValueError, match=r"notes\.nc: cannot be read as a netCDF file or a Zarr store"):
        convert(tree, cfg(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_multi_year_file_is_read_one_year_at_a_time(tmp_path, monkeypatch):
    """Peak memory of converting a 12-year file stays near one shard: the whole file was once loaded for every
    year it holds (12 × the memory and the time); its variable is put on our grid once, not once per year."""
    from met2net.data import netcdf

    normalised, normalise = [], netcdf.normalise_grid

    def counted(da: xr.DataArray) -> xr.DataArray:
        normalised.append(da.sizes["time"])
        return normalise(da)

    monkeypatch.setattr(netcdf, "normalise_grid", counted)

    years = list(range(2001, 2013))
    times = np.arange("2001-01-01", "2013-01-01", dtype="datetime64[D]").astype("datetime64[ns]")
    lat, lon = np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625
    values = np.random.default_rng(0).standard_normal((times.size, 32, 64)).astype(np.float32)
    xr.Dataset({"t2m": (("time", "lat", "lon"), values)}, coords={"time": times, "lat": lat, "lon": lon}).to_netcdf(
        tmp_path / "t2m.nc"
    )
    config = small_config(
        "model.variables=[t2m]",
        "model.grid=[32,64]",
        "data.variables=[{name: t2m, file_glob: t2m.nc, var: t2m}]",
        f"data.train_years={years[:-2]}",
        f"data.val_years={years[-2:]}",
        "data.test_years=[]",
    )
    shard_bytes = 366 * 32 * 64 * 4
    peak = traced_peak(lambda: convert(tmp_path, config, tmp_path / "out", progress=False))
    assert values.nbytes > 11 * shard_bytes
    assert peak < 4 * shard_bytes, f"peak {peak / 2**20:.1f} MiB for shards of {shard_bytes / 2**20:.1f} MiB"
    assert read_index(tmp_path / "out")["time_step_hours"] == 24
    assert normalised == [times.size]
    np.testing.assert_array_equal(
        fields(tmp_path / "out", 2004)[:, 0],
        values[(times >= np.datetime64("2004-01-01")) & (times < np.datetime64("2005-01-01"))],
    )


@pytest.mark.parametrize("files", [1, 3])
def test_a_shard_is_written_a_block_at_a_time(tmp_path, files):
    """Converting a year holds a few blocks of it, not its shard: a shard of two variables and 46 MiB is written with
    a Python/numpy peak below half of it (the year was once read whole into the shard's array: above 46 MiB), also
    when each variable's year comes in several files (named out of time order here; they were read whole and
    concatenated), and its channels hold the sources' values."""
    times = np.arange("2004-01-01", "2005-01-05", 12, dtype="datetime64[h]").astype("datetime64[ns]")
    lat, lon = np.linspace(-88.59375, 88.59375, 64), np.arange(128) * 2.8125
    rng = np.random.default_rng(0)
    source = {}
    for name in ("t2m", "u10"):
        source[name] = rng.standard_normal((times.size, lat.size, lon.size), dtype=np.float32)
        year_files(tmp_path, name, source[name], times, lat, lon, np.array_split(np.arange(times.size), files)[::-1])
    config = year_config((64, 128), ["t2m", "u10"])
    year = times < np.datetime64("2005-01-01")
    shard_bytes = 2 * source["t2m"][year].nbytes
    peak = traced_peak(lambda: convert(tmp_path, config, tmp_path / "out", progress=False))
    assert shard_bytes > 45 * 2**20
    assert peak < shard_bytes / 2, f"peak {peak / 2**20:.1f} MiB for a shard of {shard_bytes / 2**20:.0f} MiB"
    written = fields(tmp_path / "out", 2004)
    np.testing.assert_array_equal(written[:, 0], source["t2m"][year])
    np.testing.assert_array_equal(written[:, 1], source["u10"][year])


def test_files_whose_times_interleave_are_sorted_and_overlapping_ones_refused(tmp_path):
    """A year split over files that interleave in time (even and odd frames) is read whole and sorted into its shard;
    files that share a time are refused, naming it, and nothing is written."""
    times = np.arange("2004-01-01", "2005-01-03", 24, dtype="datetime64[h]").astype("datetime64[ns]")
    lat, lon = np.linspace(-87.1875, 87.1875, 8), np.arange(16) * 22.5
    values = np.random.default_rng(0).standard_normal((times.size, lat.size, lon.size), dtype=np.float32)
    evens, odds = np.arange(0, times.size, 2), np.arange(1, times.size, 2)
    year_files(tmp_path, "t2m", values, times, lat, lon, [evens, odds])
    config = year_config((8, 16), ["t2m"])
    convert(tmp_path, config, tmp_path / "out", progress=False)
    year = times < np.datetime64("2005-01-01")
    np.testing.assert_array_equal(fields(tmp_path / "out", 2004)[:, 0], values[year])

    year_files(tmp_path, "t2m", values, times, lat, lon, [np.arange(5, 7)], first=2)
    with pytest.raises(UserError, match="2004-01-06.* appears more than once .* the files overlap"):
        convert(tmp_path, config, tmp_path / "again", progress=False)
    assert not list(tmp_path.glob("again/*"))


def test_monthly_files_of_several_variables_outnumbering_the_open_sources(tmp_path):
    """A year in twelve monthly files per variable (ERA5's usual download), two variables: 24 files for one shard,
    more than the 16 sources kept open at once, so some are closed before their year is read; the shard still holds
    every source value."""
    times = np.arange("2004-01-01", "2005-01-05", 12, dtype="datetime64[h]").astype("datetime64[ns]")
    lat, lon = np.linspace(-87.1875, 87.1875, 8), np.arange(16) * 22.5
    months = times.astype("datetime64[M]")
    rng = np.random.default_rng(0)
    groups = [np.flatnonzero(months == month) for month in np.unique(months)]
    source = {}
    for name in ("t2m", "u10"):
        source[name] = rng.standard_normal((times.size, lat.size, lon.size), dtype=np.float32)
        year_files(tmp_path, name, source[name], times, lat, lon, groups)
    config = year_config((8, 16), ["t2m", "u10"])
    convert(tmp_path, config, tmp_path / "out", progress=False)
    year = times < np.datetime64("2005-01-01")
    written = fields(tmp_path / "out", 2004)
    np.testing.assert_array_equal(written[:, 0], source["t2m"][year])
    np.testing.assert_array_equal(written[:, 1], source["u10"][year])
