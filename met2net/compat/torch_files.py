"""Files written by ``torch.save`` read without importing torch: every tensor a read-only numpy view of the file,
memory-mapped (nothing is read until a value is used).

Importing torch costs a second, and its teardown at exit most of another; consolidation needs neither. What this
relies on is torch's zip checkpoint format (torch ≥ 1.6; checked with 2.13), not promised as an API:

- a zip archive, members stored uncompressed: ``<name>/data.pkl`` (the object, pickle protocol 2),
  ``<name>/data/<key>`` (the raw bytes of storage ``key``), ``<name>/byteorder`` ("little" when present);
- storages as persistent ids ``("storage", torch.<Type>Storage, key, location, numel)``;
- tensors rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])``,
  parameters by ``_rebuild_parameter(tensor, requires_grad, hooks)`` (or ``_rebuild_parameter_with_state``), subclasses
  by ``torch._tensor._rebuild_from_type_v2(func, type, args, state)``; shapes as ``torch.Size``.

The unpickler looks up nothing but these, ``collections.OrderedDict`` and the stand-ins a caller gives for its own
classes, so no code a file names can run. bfloat16 has no numpy type: such tensors come as the structured dtype
``BF16`` (one ``uint16`` field) and ``to_float32`` widens them.
"""

from __future__ import annotations

import codecs
import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from met2net.errors import UserError

BF16 = np.dtype([("bf16", "<u2")])
_STORAGES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": BF16,
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


class FileFormatError(UserError):
    """Not a file ``torch.save`` writes in its zip format, or one that names objects this reader does not build."""


class _StorageType:
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Storage:
    """A storage's bytes in the mapped file."""

    def __init__(self, data: np.ndarray, dtype: np.dtype):
        self.array = data.view(dtype)


class _TensorType:  # torch.Tensor / torch.nn.Parameter, only ever handed to _rebuild_from_type_v2
    pass


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    size, stride = tuple(size), tuple(stride)
    numel = math.prod(size)
    flat = storage.array
    contiguous = all(st == math.prod(size[i + 1 :]) for i, st in enumerate(stride) if size[i] > 1)
    if contiguous or numel <= 1:
        return flat[offset : offset + numel].reshape(size)
    item = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat[offset:], size, tuple(s * item for s in stride), writeable=False)


_ALLOWED = {
    "collections.OrderedDict": OrderedDict,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": lambda data, *_: data,
    "torch._utils._rebuild_parameter_with_state": lambda data, *_: data,
    "torch._tensor._rebuild_from_type_v2": lambda func, new_type, args, state: func(*args),
    "torch.Tensor": _TensorType,
    "torch.nn.parameter.Parameter": _TensorType,
    "torch.Size": tuple,
    "torch.device": str,
    "_codecs.encode": codecs.encode,
    **{f"torch.{name}": _StorageType(dtype) for name, dtype in _STORAGES.items()},
    **{f"torch.{name}": name for name in _DTYPES},  # a dtype stored as a value: its name
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: dict[str, _Storage | tuple], stand_ins: dict[str, Any]):
        import io

        super().__init__(io.BytesIO(data))
        self._storages, self._stand_ins = storages, stand_ins

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in self._stand_ins:
            return self._stand_ins[full]
        if full in _ALLOWED:
            return _ALLOWED[full]
        raise pickle.UnpicklingError(f"{full} is not allowed")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        found = self._storages.get(str(key))
        if found is None:
            raise pickle.UnpicklingError(f"storage {key} is not in the archive")
        if isinstance(found, tuple):  # first use: map its bytes
            data = found[0][found[1] : found[1] + numel * storage_type.dtype.itemsize]
            if data.size != numel * storage_type.dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            found = self._storages[str(key)] = _Storage(data, storage_type.dtype)
        return found


def load(path: str | Path, stand_ins: dict[str, Any] | None = None) -> Any:
    """What ``torch.save`` wrote to ``path``, tensors as read-only numpy views of the memory-mapped file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            pkl = next(i for i in infos if i.filename.endswith("data.pkl"))
            root = pkl.filename[: -len("data.pkl")]
            order = next((i for i in infos if i.filename == f"{root}byteorder"), None)
            if order is not None and archive.read(order).decode().strip() != "little":
                raise FileFormatError(f"{path}: a big-endian checkpoint")
            data = archive.read(pkl)
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        storages: dict[str, _Storage | tuple] = {}
        with open(path, "rb") as raw:  # headers by plain reads: through the map, each would page in its neighbours
            for info in infos:
                if info.filename.startswith(f"{root}data/"):
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise FileFormatError(f"{path}: {info.filename} is compressed")
                    storages[info.filename[len(f"{root}data/") :]] = (mapped, _data_offset(raw, info))
        return _Unpickler(data, storages, stand_ins or {}).load()
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, StopIteration, KeyError, EOFError, struct.error, ValueError) as e:
        raise FileFormatError(f"{path}: not a readable torch checkpoint file ({type(e).__name__}: {e})") from None
    except pickle.UnpicklingError as e:
        raise FileFormatError(f"{path}: holds objects met2net does not read ({e})") from None


def _data_offset(raw: Any, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (30 bytes, the name, the extra field)."""
    header = os.pread(raw.fileno(), 30, info.header_offset)
    signature, *_, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", header)
    if signature != 0x04034B50:
        raise FileFormatError(f"bad local header for {info.filename}")
    return info.header_offset + 30 + name_len + extra_len


def to_float32(values: np.ndarray) -> np.ndarray:
    """fp32 values of a floating array (bfloat16 ones included); other arrays as they are."""
    if values.dtype == BF16:
        return (values["bf16"].astype(np.uint32) << 16).view(np.float32)
    if values.dtype.kind == "f" and values.dtype != np.float32:
        return values.astype(np.float32)
    return values


def is_floating(values: np.ndarray) -> bool:
    return values.dtype.kind == "f" or values.dtype == BF16
