"""``met2net consolidate CKPT -o OUT``: a sharded training checkpoint → one fp32 safetensors file + ``met2net.json``.

Streaming: the rank files are read memory-mapped, one at a time, and each piece of each tensor is written to its
place in the output as it is read; the optimizer moments are dropped unread. Memory stays near the largest single
rank file's share of the weights, whatever the number of ranks.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from met2net.consolidate import describe, zero
from met2net.consolidate.format import (
    FORMAT,
    HEADER_KEY,
    META,
    WEIGHT_SETS,
    WEIGHTS,
    ConsolidateError,
    in_weights,
    infer_model,
    is_buffer,
    is_copy,
)
from met2net.consolidate.write import SafetensorsWriter, publish, start, write_json
from met2net.data.atomic import sha256_file
from met2net.training.layout import MARKER


def consolidate(ckpt: str | Path, out: str | Path, weights: str = "inference", schedule: str | None = None) -> Path:
    """Write ``out/model.safetensors`` and ``out/met2net.json`` from checkpoint ``ckpt`` (any ZeRO stage, any world
    size, or the plain-PyTorch engine; a step directory, a stage directory, or a run directory with ``schedule``).
    ``weights``: "inference" (E_q, D_q, T_q and their buffers) or "all" (with the momentum copies, to restart
    training from). Written atomically: on any error ``out`` is left as it was. Returns ``out``."""
    if weights not in WEIGHT_SETS:
        raise ConsolidateError(f"--weights {weights!r}: expected one of {', '.join(WEIGHT_SETS)}")
    out = Path(out)
    source = zero.open_checkpoint(_checkpoint_of(Path(ckpt), schedule), schedule)
    try:
        return _write(source, out, weights)
    except BaseException:
        source.check()  # a damaged file explains any failure best
        raise


def _write(source: zero.Source, out: Path, weights: str) -> Path:
    tensors = {n: v for n, v in zero.layout(source).items() if in_weights(n, weights)}
    if weights == "all" and not any(is_copy(n) for n in tensors):
        raise ConsolidateError(
            f"{source.path}: a {source.meta.get('schedule')} checkpoint has no momentum copies; use --weights inference"
        )
    _check_config(source, zero.layout(source))
    doc = _describe(source, source.meta, weights, tensors)
    written = {n: (s, np.dtype("<f4") if d.kind == "f" or d.names else d) for n, (s, d) in tensors.items()}  # fp32
    tmp = start(out)
    try:
        writer = SafetensorsWriter(tmp / WEIGHTS, written, {"format": "pt", HEADER_KEY: json.dumps(doc)})
        try:
            for piece in zero.pieces(source, tensors):
                writer.write(*piece)
                del piece  # before the next file is read: a piece maps its file
        except BaseException:
            writer.abort()
            raise
        writer.close()
        doc["output"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
        write_json(tmp / META, doc)
        source.check()  # every file read was the one meta.json vouches for: only now does OUT change
        return publish(tmp, out)
    except ConsolidateError as e:
        if str(source.path) in str(e):
            raise
        raise ConsolidateError(f"{source.path}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_config(source: zero.Source, tensors: dict[str, Any]) -> None:
    """The model in the files is the one ``meta.json``'s config describes (its sizes, read from the shapes)."""
    found, where = infer_model({n: s for n, (s, _) in tensors.items()})
    config = source.meta["config"]["model"]
    said = {k: len(config["variables"]) if k == "variables" else config[k] for k in found}
    wrong = [f"model.{k}: meta.json {said[k]!r}, files {found[k]!r} ({where[k]})" for k in found if said[k] != found[k]]
    if wrong:
        raise ConsolidateError(
            f"{source.path}: the files hold another model than meta.json's config: {'; '.join(wrong)}"
        )


def _checkpoint_of(path: Path, schedule: str | None) -> Path:
    """A run directory without ``schedule``: its only stage, or an error listing them."""
    stages = path / "checkpoints"
    if schedule is not None or not stages.is_dir():
        return path
    found = sorted(p.name for p in stages.iterdir() if (p / "latest").is_file())
    if len(found) != 1:
        raise ConsolidateError(
            f"{path}: a run directory with checkpoints of {found or 'no stage'}; name one: "
            f"{path}/checkpoints/<stage> or --schedule <stage>"
        )
    return stages / found[0]


def _describe(source: zero.Source, meta: dict[str, Any], weights: str, tensors: dict) -> dict[str, Any]:
    """``met2net.json`` (all but the output's checksum): what the weights are, where they come from, how to use
    them."""
    config = meta["config"]
    return {
        "format": FORMAT,
        "weights": weights,
        "schedule": meta.get("schedule"),
        "step": meta.get("step"),
        "round": describe.round_of(source.path),
        "epoch": meta.get("epoch"),
        "model": config["model"],
        "config": config,
        "variables": describe.variables(config),
        "grid": describe.grid(config),
        "stats": meta.get("stats"),
        "val": meta.get("val"),
        "parameters": sum(math.prod(s) for n, (s, _) in tensors.items() if not is_buffer(n)),
        "tensors": {n: list(s) for n, (s, _) in tensors.items()},
        "source": {
            "kind": "checkpoint",
            "path": str(source.path.resolve()),
            "engine": source.engine,
            "zero_stage": source.zero_stage,
            "world_size": source.world_size,
            "met2net": meta.get("met2net"),
            "torch": meta.get("torch"),
            "deepspeed": zero.deepspeed_version(source),
            "git": meta.get("git"),
            "files": {
                **meta.get("files", {}),
                "meta.json": (source.path / MARKER).read_text().strip(),  # COMPLETE holds meta.json's sha256
            },
        },
        "written_by": describe.versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
