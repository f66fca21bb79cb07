"""Every use of a dependency's private internals, in one place, each with what it relies on.

met2net leans on a few things that DeepSpeed and submitit do not promise to keep: attributes of ZeRO-3
parameters, DeepSpeed's op table and universal-checkpoint file layout, submitit's signal and batch-script
helpers. They live in ``deepspeed_internals`` and ``submitit_internals`` only, and the versions they were
tested with are pinned in ``pyproject.toml`` and checked at start-up by ``check_versions``.
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata

# The versions the test suite runs with; keep in line with pyproject.toml (tests/unit/test_compat.py checks).
TESTED = {"deepspeed": ">=0.19.8,<0.20", "submitit": ">=1.5.4,<1.6"}
ALLOW_UNTESTED = "MET2NET_ALLOW_UNTESTED_VERSIONS"


def check_versions(*packages: str) -> None:
    """Refuse to start with a version of ``packages`` outside the tested range (a private internal may have moved),
    with the pip command that fixes it; ``MET2NET_ALLOW_UNTESTED_VERSIONS=1`` turns the error into a warning."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for name in packages or tuple(TESTED):
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise RuntimeError(
                f"{name} is not installed; met2net needs {name}{TESTED[name]}: pip install '{name}{TESTED[name]}'"
            ) from None
        if Version(found) in SpecifierSet(TESTED[name]):
            continue
        message = (
            f"{name} {found} is installed; met2net is tested with {name}{TESTED[name]} and relies on its "
            f"internals (met2net/compat/): pip install '{name}{TESTED[name]}', or set {ALLOW_UNTESTED}=1 to "
            "run anyway"
        )
        if os.environ.get(ALLOW_UNTESTED) == "1":
            warnings.warn(message, stacklevel=2)
        else:
            raise RuntimeError(message)


def numpy_globals() -> list[object]:
    """What a pickled NumPy array or scalar names (its reconstructor, ``ndarray``, ``dtype`` and the dtype classes):
    data, never code. Allowed in ``load_data`` for the NumPy RNG state and NumPy numbers in a checkpoint."""
    import numpy as np

    kinds = (np.float64, np.float32, np.int64, np.int32, np.uint32, np.uint64, np.bool_)
    return [
        np.array(0).__reduce__()[0],  # numpy(._core).multiarray._reconstruct, wherever this NumPy keeps it
        np.float64(0).__reduce__()[0],  # numpy(._core).multiarray.scalar
        np.ndarray,
        np.dtype,
        *(type(np.dtype(k)) for k in kinds),
    ]


def load_data(path: str | os.PathLike, **kwargs: object) -> object:
    """``torch.load`` with ``weights_only=True``: tensors, plain Python data and NumPy arrays and numbers load; a file
    that names any other Python object (a pickle that would run code) raises ``pickle.UnpicklingError`` unloaded."""
    import torch

    with torch.serialization.safe_globals(numpy_globals()):
        return torch.load(path, weights_only=True, **kwargs)
