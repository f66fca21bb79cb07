"""``met2net import-reference FILE -o OUT``: a checkpoint of the authors' reference implementation → consolidated
weights that evaluation loads and ``training.init_from`` fine-tunes from.

The file (``.ckpt`` from Lightning or a plain ``.pth``) holds the state dict at its top level or under
``state_dict``, its keys possibly prefixed ``model.``; keys map to ours through ``met2net.model.reference_keys``
(MODEL.md §5), the dead squeeze-excitation branch is dropped. It is read with ``weights_only=True``: a file that
needs arbitrary unpickling (a Lightning checkpoint whose hyper-parameters are Python objects) is refused unless the
user says it is trusted (``trust_pickle``). The model configuration is inferred from the shapes (variables, N_S,
hid_S, hid_T, N_T, frames); what the shapes cannot tell (grid, heads, variable names, drop_path) comes from the
config, and values the config sets that disagree with the weights are named.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from met2net.config import Config, ConfigError, config_from_dict
from met2net.consolidate import describe
from met2net.consolidate.format import (
    FORMAT,
    HEADER_KEY,
    META,
    WEIGHT_SETS,
    WEIGHTS,
    ConsolidateError,
    infer_model,
    is_copy,
)
from met2net.consolidate.layout import expected_tensors, num_parameters
from met2net.consolidate.write import SafetensorsWriter, publish, start, write_json
from met2net.data.atomic import sha256_file
from met2net.model.reference_keys import reference_key_to_ours


@dataclass
class ImportReport:
    """What the import did: keys mapped, dropped (the dead branch), missing and unknown; the configuration values read
    from the shapes."""

    out: Path
    mapped: int = 0
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # momentum copies not written (--weights inference)
    inferred: dict[str, Any] = field(default_factory=dict)
    config: Config | None = None

    def describe(self) -> str:
        lines = [
            f"mapped {self.mapped} reference keys; dropped {len(self.dropped)} of the dead squeeze-excitation branch"
            + (f" ({self.dropped[0]}, …)" if self.dropped else ""),
            "inferred from the shapes: " + ", ".join(f"model.{k}={v}" for k, v in self.inferred.items()),
        ]
        if self.missing:
            lines.append(f"missing in the file: {len(self.missing)} keys, e.g. {self.missing[:3]}")
        if self.left_out:
            lines.append(f"left out (momentum copies, --weights inference): {len(self.left_out)} keys")
        if self.config is not None:
            m = self.config.model
            lines.append(f"not in the weights, from the config: model.grid={m.grid}, model.num_heads={m.num_heads}")
        return "\n".join(lines)


def load_reference_file(
    path: str | Path, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(the state dict, the rest of the file's top level — None for a bare state dict) of a reference checkpoint.
    ``weights_only=True`` unless ``trust_pickle``: a file that names other Python objects is refused, naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as f:
        pickled = f.read(1) == b"\x80"  # torch's legacy format: a pickle, protocol 2 or later
    if not pickled and not zipfile.is_zipfile(path):
        raise ConsolidateError(
            f"{path}: not a torch checkpoint (neither torch's zip format nor a pickle; truncated?); give the .ckpt or "
            ".pth file the reference code saved"
        )
    try:
        blob = _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            try:
                names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or str(e)
            except Exception:  # noqa: BLE001 - a legacy (non-zip) file: only the error says what it holds
                names = str(e).splitlines()[0]
            raise ConsolidateError(
                f"{path}: loading it needs arbitrary unpickling ({names}), which can run any code the file names. "
                "If you trust the file, run again with --trust-pickle"
            ) from None
        blob = _torch_load(path, weights_only=False)  # the user vouched for this file (--trust-pickle)
    if not isinstance(blob, dict):
        raise ConsolidateError(
            f"{path}: holds a {type(blob).__name__}, expected a state dict or a Lightning checkpoint"
        )
    inner = blob.get("state_dict")
    state = inner if isinstance(inner, dict) else blob
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise ConsolidateError(f"{path}: no tensors at its top level nor under 'state_dict'")
    rest = {k: v for k, v in blob.items() if k != "state_dict"} if isinstance(inner, dict) else None
    return tensors, rest


def _torch_load(path: Path, weights_only: bool) -> Any:
    """``torch.load``; ``weights_only`` False only for a file the user vouched for (--trust-pickle)."""
    try:  # weights_only as the caller says: see load_reference_file
        return torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
    except RuntimeError as e:
        if "mmap" not in str(e) and "zip" not in str(e):
            raise ConsolidateError(f"{path}: not a readable torch checkpoint ({e})") from None
        return torch.load(path, map_location="cpu", weights_only=weights_only)  # the legacy format cannot be mapped


def map_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(our state dict, dropped keys, unknown keys)."""
    ours: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, value in state.items():
        try:
            new = reference_key_to_ours(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            dropped.append(key)
        else:
            ours[new] = value
    return ours, dropped, unknown


def resolve_config(
    inferred: dict[str, Any], where: dict[str, str], config: Config | None, explicit: set[str]
) -> Config:
    """The config the weights fit: ``config`` (or the defaults) with the inferred values; a value set explicitly
    (``explicit``: dotted keys from the config file or the command line) that disagrees with the weights is an
    error naming both."""
    cfg = config or Config()
    raw = cfg.to_dict()
    wrong, count = [], None
    for key, value in inferred.items():
        ours = len(raw["model"]["variables"]) if key == "variables" else raw["model"][key]
        if ours != value and f"model.{key}" in explicit:
            wrong.append(f"model.{key}: config {ours!r}, weights {value!r} ({where[key]})")
        elif ours != value and key == "variables":
            count = len(raw["model"]["variables"])
        elif key != "variables":
            raw["model"][key] = value
    if wrong:
        raise ConsolidateError("the weights disagree with the config: " + "; ".join(wrong))
    if count is not None:
        n = inferred["variables"]
        raise ConsolidateError(
            f"the weights have {n} variables (enc_q_list.0 … {n - 1}); the config names {count}: give "
            "model.variables=[...] in the channel order of training"
        )
    try:
        return config_from_dict(raw, "the imported weights")
    except ConfigError as e:
        raise ConsolidateError(str(e)) from None


def import_reference(
    path: str | Path,
    out: str | Path,
    config: Config | None = None,
    explicit: set[str] | None = None,
    weights: str = "all",
    trust_pickle: bool = False,
    stats: str | Path | None = None,
) -> ImportReport:
    """Write ``out/model.safetensors`` and ``out/met2net.json`` from reference checkpoint ``path``. ``config``:
    grid, heads, variable names (and any model values to check, listed in ``explicit``); the defaults (the paper's
    5.625° setting) otherwise. ``stats``: a ``stats.json`` or a shard directory holding one (default: the config's
    ``data.path`` when it has one); the reference's own statistics are not in its checkpoint."""
    if weights not in WEIGHT_SETS:
        raise ConsolidateError(f"--weights {weights!r}: expected one of {', '.join(WEIGHT_SETS)}")
    path, out = Path(path), Path(out)
    state, wrapper = load_reference_file(path, trust_pickle)
    rest = wrapper or {}
    ours, dropped, unknown = map_keys(state)
    if unknown:
        raise ConsolidateError(
            f"{path}: {len(unknown)} key(s) match no Met²Net module, e.g. {unknown[:3]}: not a checkpoint of the "
            "authors' Met²Net (MODEL.md §5)"
        )
    inferred, where = infer_model({k: tuple(v.shape) for k, v in ours.items()})
    cfg = resolve_config(inferred, where, config, explicit if config is not None else set())
    tensors = expected_tensors(cfg.model, weights)
    report = ImportReport(out, mapped=len(ours), dropped=dropped, inferred=inferred, config=cfg)
    report.missing = [k for k in tensors if k not in ours]
    report.left_out = [k for k in ours if k not in tensors and is_copy(k)]
    extra = [k for k in ours if k not in tensors and not is_copy(k)]
    wrong = [
        f"{k}: file {tuple(ours[k].shape)}, model {tensors[k][0]}"
        for k in tensors
        if k in ours and ours[k].shape != tensors[k][0] and not (ours[k].numel() == 1 and tensors[k][0] == ())
    ]
    if report.missing or extra or wrong:
        raise ConsolidateError(
            f"{path}: does not fit the model of its configuration: "
            + "; ".join(
                part
                for part in (
                    f"missing {report.missing[:5]}" if report.missing else "",
                    f"unexpected {extra[:5]}" if extra else "",
                    ", ".join(wrong[:5]),
                )
                if part
            )
        )
    raw = cfg.to_dict()
    doc = {
        "format": FORMAT,
        "weights": weights,
        "schedule": "reference",
        "step": int(rest.get("global_step", 0)),
        "round": None,
        "epoch": rest.get("epoch"),
        "model": raw["model"],
        "config": raw,
        "variables": describe.variables(raw),
        "grid": describe.grid(raw),
        "stats": _stats(stats, cfg),
        "val": None,
        "parameters": num_parameters(cfg.model, weights),
        "tensors": {n: list(s) for n, (s, _) in tensors.items()},
        "source": {
            "kind": "reference",
            "path": str(path.resolve()),
            "layout": "state_dict" if wrapper is None else "wrapped (state_dict key)",
            "prefixed": any(k.startswith("model.") for k in state),
            "mapped": len(ours),
            "dropped": dropped,
            "lightning": rest.get("pytorch-lightning_version"),
            "files": {path.name: sha256_file(path)},
        },
        "written_by": describe.versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    written = {
        n: (s, np.dtype("<f4") if d.is_floating_point else np.dtype(str(d).removeprefix("torch.")))
        for n, (s, d) in tensors.items()
    }
    tmp = start(out)
    try:
        writer = SafetensorsWriter(tmp / WEIGHTS, written, {"format": "pt", HEADER_KEY: json.dumps(doc)})
        try:
            for name in tensors:
                value = ours[name].detach()
                value = value.float() if value.is_floating_point() else value
                writer.write(name, 0, value.numpy())  # a scalar saved as (1,) fits its () slot: same element count
        except BaseException:
            writer.abort()
            raise
        writer.close()
        doc["output"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
        write_json(tmp / META, doc)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _stats(stats: str | Path | None, cfg: Config) -> dict[str, Any] | None:
    """``{"variables", "mean", "std"}`` for the model's variables from a ``stats.json`` (``met2net data stats``)."""
    where = Path(stats) if stats else (Path(cfg.data.path) if cfg.data.source == "shards" and cfg.data.path else None)
    if where is None:
        return None
    file = where / "stats.json" if where.is_dir() else where
    if not file.is_file():
        if stats:
            raise FileNotFoundError(f"{file}: no such statistics file (met2net data stats writes it)")
        return None
    doc = json.loads(file.read_text())
    names = cfg.model.variables
    absent = [v for v in names if v not in doc["channels"]]
    if absent:
        raise ConsolidateError(f"{file}: has no statistics of {absent} (it has {doc['channels']})")
    mean = [doc["mean"][doc["channels"].index(v)] for v in names]
    std = [s if s > 0 else 1.0 for s in (doc["std"][doc["channels"].index(v)] for v in names)]
    return {"variables": list(names), "mean": mean, "std": std}
