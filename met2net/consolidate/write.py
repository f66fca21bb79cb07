"""Writing a consolidated directory: a safetensors file filled piece by piece, published atomically.

The safetensors format is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and byte
range; ``__metadata__``: string → string) padded with spaces to a multiple of 8, then the tensors' bytes. Every
shape is known before the first value is read, so the header is written first and each piece of a tensor goes
straight to its place in the file (``os.pwrite``): whatever order the rank files deliver them in, nothing is gathered
in memory. Every element of every tensor is counted, so a hole or an overlap is an error, not a silent zero.

The directory is written as ``.<OUT>.partial`` beside ``OUT``, every file fsynced, and renamed into place; an
existing consolidated ``OUT`` is moved aside first and deleted only after the rename. A failure at any point leaves
``OUT`` as it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

from met2net.compat.torch_files import to_float32
from met2net.consolidate.format import META, WEIGHTS, ConsolidateError
from met2net.data.atomic import fsync

DTYPES = {  # numpy → safetensors
    np.dtype("<f4"): "F32",
    np.dtype("<f8"): "F64",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}
Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


class SafetensorsWriter:
    """A safetensors file of known tensors (name → (shape, numpy dtype)), written piece by piece in any order."""

    def __init__(self, path: Path, tensors: Layout, metadata: dict[str, str]):
        if sys.byteorder != "little":
            raise ConsolidateError("safetensors files are little-endian; this machine is not")
        header: dict[str, object] = {"__metadata__": metadata}
        self._slots: dict[str, tuple[int, int, np.dtype]] = {}
        end = 0
        for name, (shape, dtype) in tensors.items():
            numel = math.prod(shape)
            dtype = np.dtype(dtype)
            nbytes = numel * dtype.itemsize
            header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [end, end + nbytes]}
            self._slots[name] = (end, numel, dtype)
            end += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.path, self._start = Path(path), 8 + len(text)
        self._written = dict.fromkeys(tensors, 0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pwrite(struct.pack("<Q", len(text)) + text, 0)
        os.ftruncate(self._fd, self._start + end)

    def write(self, name: str, first: int, values: np.ndarray) -> None:
        """``values`` (any shape; floating ones converted to the tensor's dtype, bfloat16 included) as elements
        ``first, first + 1, …`` of ``name``."""
        if name not in self._slots:
            raise ConsolidateError(f"{self.path}: no tensor {name!r} in this file's layout")
        offset, numel, dtype = self._slots[name]
        flat = to_float32(np.asarray(values)).reshape(-1)
        if first < 0 or first + flat.size > numel:
            raise ConsolidateError(f"{name}: elements [{first}, {first + flat.size}) do not fit its {numel} elements")
        if flat.dtype != dtype:
            flat = flat.astype(dtype)
        if flat.size:
            self._pwrite(
                memoryview(np.ascontiguousarray(flat)).cast("B"), self._start + offset + first * dtype.itemsize
            )
        self._written[name] += flat.size

    def _pwrite(self, data: bytes | memoryview, position: int) -> None:
        view = memoryview(data)
        while view.nbytes:
            done = os.pwrite(self._fd, view, position)
            view, position = view[done:], position + done

    def close(self) -> None:
        """Check that every element was written exactly once (counts), then flush the file to disk."""
        try:
            wrong = [n for n, (_, numel, _) in self._slots.items() if self._written[n] != numel]
            if wrong:
                details = ", ".join(f"{n} ({self._written[n]} of {self._slots[n][1]})" for n in wrong[:5])
                raise ConsolidateError(f"{len(wrong)} tensor(s) not written whole: {details}")
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def check_target(out: Path) -> None:
    """``OUT`` may be new, or a consolidated directory to replace; anything else is left alone."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / META).is_file()):
        raise ConsolidateError(
            f"{out}: exists and is not a consolidated directory (no {META}); choose another -o OUT or move it away"
        )


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def start(out: Path) -> Path:
    """A fresh, empty ``.<OUT>.partial`` directory to write into."""
    out = Path(out)
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: Path) -> Path:
    """Rename the finished ``tmp`` into ``out`` (every file and the directories fsynced); an existing ``out`` is
    moved aside first and deleted only once the new one has its name."""
    for name in (WEIGHTS, META):
        fsync(tmp / name)
    fsync(tmp)
    old = out.parent / f".{out.name}.replaced"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    fsync(out.parent)
    shutil.rmtree(old, ignore_errors=True)
    return out


def write_json(path: Path, doc: dict) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
