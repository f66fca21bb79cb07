"""What ``met2net.json`` says about consolidated weights besides the config: variables with units, the grid,
versions, the training round. Read from the config and the data it names; torch-free."""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import met2net


def variables(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Each model variable with its units, long name and level: from the shard directory's ``index.json`` when the
    config trains on shards (and it is at hand), from the built-in dataset's table for ``synthetic``; units unknown
    (``null``) otherwise."""
    names = list(config["model"]["variables"])
    data = config.get("data", {})
    found: dict[str, dict[str, Any]] = {}
    index = Path(data.get("path") or ".") / "index.json"
    if data.get("source") == "shards" and index.is_file():
        doc = json.loads(index.read_text())
        for i, c in enumerate(doc.get("channels", [])):
            level = doc.get("levels", [-1] * (i + 1))[i]
            found[c] = {
                "units": doc["units"][i],
                "long_name": doc["long_names"][i],
                "level": None if level == -1 else level,
            }
    elif data.get("source") == "synthetic":
        from met2net.data.synthetic import VARIABLES

        found = {
            k: {"units": v["units"], "long_name": v["long_name"], "level": v["level"]} for k, v in VARIABLES.items()
        }
    blank = {"units": None, "long_name": None, "level": None}
    return [{"name": n, **found.get(n, blank)} for n in names]


def grid(config: dict[str, Any]) -> dict[str, Any]:
    """``shape`` [lat, lon] and, when known, the coordinates in degrees (south → north, east from 0°)."""
    shape = list(config["model"]["grid"])
    data = config.get("data", {})
    lat = lon = None
    index = Path(data.get("path") or ".") / "index.json"
    if data.get("source") == "shards" and index.is_file():
        doc = json.loads(index.read_text())
        if [len(doc["lat"]), len(doc["lon"])] == shape:
            lat, lon = doc["lat"], doc["lon"]
    elif data.get("source") == "synthetic":
        from met2net.data.synthetic import latitudes, longitudes

        lat, lon = latitudes(shape[0]).tolist(), longitudes(shape[1]).tolist()
    return {"shape": shape, "lat": lat, "lon": lon}


def versions() -> dict[str, str | None]:
    """The versions writing the file (DeepSpeed's from its metadata: it is not imported)."""

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "met2net": met2net.__version__,
        "torch": installed("torch"),
        "deepspeed": installed("deepspeed"),
        "safetensors": installed("safetensors"),
        "python": sys.version.split()[0],
    }


def round_of(ckpt: Path) -> int:
    """The pipeline round a checkpoint belongs to: ``<run>/round_<r>/checkpoints/...`` (``met2net submit --rounds``),
    else 1."""
    for part in reversed(Path(ckpt).resolve().parts):
        if m := re.fullmatch(r"round_(\d+)", part):
            return int(m.group(1))
    return 1
