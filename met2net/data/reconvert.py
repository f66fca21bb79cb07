"""Converting into a directory that already holds shards: what they were built from, what changed, and replacing
a set only once its successor is complete.

``index.json`` records the conversion (``conversion``): the settings that decide the shards' content and every
source's path, size and modification time (of a Zarr store: its files' total size and newest time). A re-run with
the same record keeps the valid shards (an unchanged re-run writes nothing); a different record is refused unless
``--force``, because reusing shards built from other files or settings would silently mix two datasets. With
``--force`` the new set is built in a hidden sibling directory (``.<out>.rebuild-<pid>-<hex>``) and swapped in only
once its index is written, so a failed or killed run never costs the old, valid shards, and the old ``stats.json``
goes with the old shards.

A run killed outright (SIGKILL, a lost node) can leave our temporaries behind: `clean_stale` removes them at the
start of the next run into the same directory and says what it removed. That is safe because only one conversion
writes into a directory at a time: `ConvertLock` (an exclusive ``flock`` on ``.<out>.lock`` beside it, held by rank 0
for the whole run) refuses a second one, naming the holder, before it reads or removes anything; the kernel drops the
lock when the holder ends, however it ends, so a stale lock never blocks a re-run.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import os
import shutil
import socket
from pathlib import Path

from met2net.data.atomic import TEMPORARY, LockHeld, fsync, record_holder, sha256_file, take_lock, unique_suffix
from met2net.errors import UserError

_SHOWN = 3  # changed files named in a refusal; the rest are counted


class ConversionChanged(UserError):
    """The shard directory was converted from other sources or settings; the message says what differs."""


class ConversionInProgress(UserError):
    """Another live ``met2net data convert`` writes into the same shard directory."""


class ConvertLock:
    """The exclusive lock of one shard directory, a hidden file beside it (the directory itself is renamed by a
    ``--force`` swap). Two conversions into one directory would each take the other's rebuild and temporaries for
    a stopped run's and delete them, or interleave shards of two sources."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out.parent / f".{self.out.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ConversionInProgress naming its holder; on a file system without ``flock`` (some
        NFS and Lustre mounts) warn and go on unguarded."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:  # the holder removes the file as it ends: a lock on a file no longer at the path is no lock
            fd = self._take()
            if fd is None or self._current(fd):
                break
            os.close(fd)
        if fd is not None:
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            record_holder(fd, {"host": socket.gethostname(), "pid": os.getpid(), "started": started})
            self.fd = fd

    def _current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _take(self) -> int | None:
        """The locked descriptor, or None without lock support."""
        try:
            return take_lock(self.path, f"nothing stops a second conversion into {self.out}")
        except LockHeld as held:
            info = held.holder
            who = (
                f"host {info['host']}, pid {info['pid']}, since {info['started']}"
                if {"host", "pid", "started"} <= info.keys()
                else "a process that is starting"
            )
            raise ConversionInProgress(
                f"{self.out} is being written by another met2net data convert ({who}); two conversions "
                "into one directory would delete each other's files. Wait for it to end, or convert into another "
                f"directory with -o. Its lock ({self.path}) is released when that process ends: nothing to delete"
            ) from None

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a waiting run that opened the old file sees it gone and
        retries), so a finished conversion leaves nothing beside its directory."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def record(settings: dict, root: Path, paths: list[Path], hashes: bool = False) -> dict:
    """The ``conversion`` entry of index.json for ``settings`` and the source files ``paths`` under ``root``;
    ``hashes`` (``data convert --hash``): each source's sha256 too, read in full."""
    sources = []
    for path in sorted(set(paths)):
        size, mtime_ns = _fingerprint(path)
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        sources.append({"path": str(rel), "size": size, "mtime_ns": mtime_ns, **_content_hash(path, hashes)})
    return {"settings": settings, "root": str(root.resolve()), "sources": sources}


def _content_hash(path: Path, wanted: bool) -> dict:
    """``{"sha256": hex}`` of a source file, or of a Zarr store (its files' relative paths and contents, in path
    order); empty unless ``wanted``: hashing reads every byte, as much as a conversion, so it is on request."""
    if not wanted:
        return {}
    if not path.is_dir():
        return {"sha256": sha256_file(path)}
    digest = hashlib.sha256()
    for entry in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{entry.relative_to(path)}\0{sha256_file(entry)}\n".encode())
    return {"sha256": digest.hexdigest()}


def _differs(a: dict, b: dict) -> str | None:
    """How a source changed between two records, or None. Where both hold a content hash it decides alone: a file
    copied or touched (a new modification time) with the same bytes is the same source."""
    if "sha256" in a and "sha256" in b:
        return None if a["sha256"] == b["sha256"] else f"{b['path']} (content changed)"
    if a["size"] != b["size"]:
        return f"{b['path']} ({a['size']} → {b['size']} bytes)"
    return f"{b['path']} (modified)" if a["mtime_ns"] != b["mtime_ns"] else None


def _fingerprint(path: Path) -> tuple[int, int]:
    """(size, modification time) of a source: of the file, or for a Zarr store (a folder) the total size of its
    files and the newest modification time among them and its folders (a rewritten chunk changes one file only)."""
    if not path.is_dir():
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    size, newest = 0, path.stat().st_mtime_ns
    for entry in path.rglob("*"):
        st = entry.stat()
        newest = max(newest, st.st_mtime_ns)
        size += st.st_size if entry.is_file() else 0
    return size, newest


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def changes(old: dict | None, new: dict) -> list[str]:
    """What differs between two conversion records, one line per setting and per kind of file change; empty if
    the shards are current. The source root is informational: a moved tree with the same files is the same data."""
    if old is None:
        return ["index.json has no record of its sources and settings (written by an older met2net or by hand)"]
    lines = []
    for key in sorted(set(old["settings"]) | set(new["settings"])):
        a, b = old["settings"].get(key), new["settings"].get(key)
        if a != b:
            lines.append(f"{key}: {a} → {b}")
    before = {s["path"]: s for s in old["sources"]}
    after = {s["path"]: s for s in new["sources"]}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = [d for p in sorted(set(before) & set(after)) if (d := _differs(before[p], after[p]))]
    for items, what in ((changed, "changed"), (added, "added"), (removed, "removed")):
        if items:
            lines.append(f"{len(items)} source file{'s' if len(items) > 1 else ''} {what}: {_listed(items)}")
    return lines


def renewable(old: dict, new: dict) -> bool:
    """Whether a re-run that found the same sources rewrites the record: when it differs (a copied or touched source
    with the same content, a moved tree), unless that would drop content hashes a run without ``--hash`` lacks."""
    hashed = all("sha256" in s for s in new["sources"]) or not any("sha256" in s for s in old["sources"])
    return old != new and hashed


def adoptable(index: dict, channels: list[str], years: list[int]) -> bool:
    """An index written before conversions were recorded is kept, as that version did, when it has the same
    channels and one shard per year: refusing it would make every existing directory need ``--force``."""
    return index.get("channels") == channels and {e["file"] for e in index["shards"]} == {f"{y}.h5" for y in years}


def refusal(out: Path, lines: list[str]) -> ConversionChanged:
    """The error for a re-run whose conversion differs from the one that wrote ``out``."""
    return ConversionChanged(
        f"{out} holds shards converted from other sources or settings:\n  "
        + "\n  ".join(lines)
        + "\nre-run with --force to replace them (the new set is built beside the old one and swapped in only "
        "when complete; stats.json is removed with the old shards), or write to another directory with -o"
    )


def rebuild_dir(out: Path) -> Path:
    """A fresh hidden sibling of ``out`` to build a replacement set in."""
    path = out.parent / f".{out.name}.rebuild-{unique_suffix()}"
    path.mkdir(parents=True)
    return path


def swap_in(new: Path, out: Path) -> None:
    """Replace ``out`` by the complete set in ``new``: two renames, then the old set is deleted. A run stopped
    between the renames leaves ``.<out>.replaced-*`` and no ``out``; `clean_stale` restores it."""
    old = out.parent / f".{out.name}.replaced-{unique_suffix()}"
    os.rename(out, old)
    os.rename(new, out)
    fsync(out.parent)
    shutil.rmtree(old)


def clean_stale(out: Path) -> list[str]:
    """Remove what killed runs into ``out`` left behind (our own names only) and return one line per item."""
    notes = []
    prefix = f".{glob.escape(out.name)}"
    for old in sorted(out.parent.glob(f"{prefix}.replaced-*")):
        if out.exists():
            shutil.rmtree(old)
            notes.append(f"removed {old}, an old shard set a stopped run had already replaced")
        else:
            os.rename(old, out)
            notes.append(f"restored {out} from {old.name} (a run was stopped while swapping in a rebuilt set)")
    for partial in sorted(out.parent.glob(f"{prefix}.rebuild-*")):
        shutil.rmtree(partial)
        notes.append(f"removed {partial}, the unfinished rebuild of a stopped run")
    if out.is_dir():
        for tmp in sorted(p for p in out.iterdir() if TEMPORARY.match(p.name) and p.is_file()):
            tmp.unlink()
            notes.append(f"removed {tmp}, a temporary file a stopped run left")
    return notes


def drop_stats(directory: Path, stats_name: str) -> str | None:
    """Remove ``stats.json`` once shards it was computed from were rewritten; a line saying so, or None."""
    path = directory / stats_name
    if not path.exists():
        return None
    path.unlink()
    return f"removed {path}: the shards changed, re-run met2net data stats"
