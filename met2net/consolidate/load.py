"""Reading consolidated weights: safetensors and JSON only — nothing here unpickles.

``load_consolidated`` is what evaluation, prediction and ``training.init_from`` call; ``verify_consolidated`` re-checks
a directory against its ``met2net.json`` (``met2net consolidate --verify OUT``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from met2net.consolidate.format import (
    HEADER_KEY,
    META,
    WEIGHT_SETS,
    WEIGHTS,
    ConsolidateError,
    is_copy,
    model_config,
    trained_twin,
)
from met2net.data.atomic import sha256_file

if TYPE_CHECKING:
    import torch


def _files(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, its met2net.json or None) for an OUT directory or a .safetensors file."""
    p = Path(path)
    if p.is_dir():
        return p / WEIGHTS, p / META
    meta = p.parent / META
    return p, meta if meta.is_file() and p.name == WEIGHTS else None


def is_consolidated(path: str | Path) -> bool:
    """``path`` is a consolidated directory (``met2net.json`` + ``model.safetensors``) or a safetensors file whose
    header carries met2net's metadata."""
    p = Path(path)
    if p.is_dir():
        return (p / META).is_file() and (p / WEIGHTS).is_file()
    if p.is_file() and p.suffix == ".safetensors":
        try:
            return HEADER_KEY in (_header_metadata(p) or {})
        except Exception:  # noqa: BLE001 - not a safetensors file: not consolidated
            return False
    return False


def _header_metadata(path: Path) -> dict[str, str] | None:
    with safe_open(path, framework="numpy") as f:
        return f.metadata()


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of consolidated weights: ``met2net.json`` beside them, else the copy in the safetensors
    header."""
    weights, meta = _files(path)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file; expected a directory written by met2net consolidate")
    try:
        if meta is not None and meta.is_file():
            return json.loads(meta.read_text())
        header = _header_metadata(weights) or {}
        if HEADER_KEY not in header:
            raise ConsolidateError(
                f"{weights}: a safetensors file without met2net's metadata (no {HEADER_KEY!r} entry)"
            )
        return json.loads(header[HEADER_KEY])
    except (ValueError, OSError) as e:
        if isinstance(e, ConsolidateError):
            raise
        raise ConsolidateError(f"{meta or weights}: unreadable metadata ({e}); consolidate again") from None


def load_consolidated(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of consolidated weights: ``path`` is the OUT directory or its ``model.safetensors``
    (with ``met2net.json`` beside it, or alone: the header's copy is used). The file's sha256 is checked against
    ``met2net.json`` when that is present. Build the model as ``Met2Net(model_config(meta["config"]),
    with_copies=meta["weights"] == "all")``, or fit the state to another model with ``fit_to_model``."""
    weights, meta_path = _files(path)
    meta = read_meta(path)
    expected = meta.get("output", {}).get(WEIGHTS)
    if meta_path is not None and expected and sha256_file(weights) != expected:
        raise ConsolidateError(
            f"{weights}: altered or truncated (its sha256 is not the one {meta_path} holds); consolidate again"
        )
    from safetensors.torch import load_file

    try:
        state = load_file(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ConsolidateError(f"{weights}: not a readable safetensors file ({e})") from None
    return state, meta


def fit_to_model(state: dict[str, torch.Tensor], model_keys: list[str] | set[str]) -> dict[str, torch.Tensor]:
    """``state`` for a model whose state dict has ``model_keys``: momentum copies the file lacks (an inference
    file) start equal to their trained twins, as ``Met2Net``'s constructor makes them; copies the model lacks are
    left out. Anything else missing or extra is left for ``load_state_dict`` to refuse."""
    keys = set(model_keys)
    fitted = {k: v for k, v in state.items() if k in keys or not is_copy(k)}
    for k in keys:
        if k not in fitted and is_copy(k) and trained_twin(k) in state:
            fitted[k] = state[trained_twin(k)].clone()
    return fitted


def verify_consolidated(out: str | Path) -> list[str]:
    """What is wrong with consolidated directory ``out`` (empty: fine): ``met2net.json`` unreadable, the weights'
    sha256, the header's metadata, tensor names, shapes, dtypes and the parameter count against ``met2net.json`` and
    against the model its config describes."""
    out = Path(out)
    weights, meta_path = _files(out)
    if meta_path is None or not meta_path.is_file():
        return [f"{META} is missing"]
    if not weights.is_file():
        return [f"{WEIGHTS} is missing"]
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        return [f"{META} is not valid JSON ({e})"]
    problems = []
    digest = meta.get("output", {}).get(WEIGHTS)
    if digest != sha256_file(weights):
        problems.append(f"{WEIGHTS} was altered or truncated (sha256 differs from {META})")
    try:
        with safe_open(weights, framework="numpy") as f:
            header = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        return [*problems, f"{WEIGHTS} is not a readable safetensors file ({e})"]
    inner = {k: v for k, v in meta.items() if k != "output"}
    if json.loads(header.get(HEADER_KEY, "null")) != inner:
        problems.append(f"the metadata in {WEIGHTS}'s header differs from {META}")
    listed = {k: tuple(v) for k, v in meta.get("tensors", {}).items()}
    if shapes != listed:
        diff = sorted(set(shapes) ^ set(listed)) or [k for k in shapes if shapes[k] != listed[k]]
        problems.append(f"tensors differ from {META}'s list: {diff[:5]}")
    weights_set = meta.get("weights")
    if weights_set not in WEIGHT_SETS:
        return [*problems, f"{META}: weights {weights_set!r}, expected one of {WEIGHT_SETS}"]
    from met2net.consolidate.layout import buffer_names, expected_tensors, num_parameters  # the model: torch

    cfg = model_config(meta["config"])
    model = expected_tensors(cfg, weights_set)
    if {k: s for k, (s, _) in model.items()} != shapes:
        missing, extra = sorted(set(model) - set(shapes)), sorted(set(shapes) - set(model))
        wrong = [k for k in model if k in shapes and model[k][0] != shapes[k]]
        problems.append(
            f"tensors do not fit the model of its config: missing {missing[:3]}, extra {extra[:3]}, shapes {wrong[:3]}"
        )
    floats = [k for k, d in dtypes.items() if d not in ("F32", "I64")]
    if floats:
        problems.append(f"tensors not in fp32: {floats[:5]}")
    buffers = buffer_names(cfg, weights_set)
    count = sum(math.prod(s) for k, s in shapes.items() if k in model and k not in buffers)
    if meta.get("parameters") != count or count != num_parameters(cfg, weights_set):
        problems.append(f"parameter count {count}, {META} says {meta.get('parameters')}")
    return problems
