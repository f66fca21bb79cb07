"""Missing values: the per-variable policy of ``data.missing`` and the mask that keeps filled points out of the
statistics, the loss and the metrics.

A field with missing values (sea-surface temperature over land, a station gap) cannot go into a shard as NaN: every
convolution would spread it over the whole forecast. ``data.missing`` says per model variable what convert does:

- ``error`` (the default): refuse the source, naming the file, the variable, the year and the first missing point;
- ``mean``: fill each missing point with the mean of the same frame's valid points;
- ``zero``: fill with 0;
- a number: fill with it (in the source's units).

The model sees the filled values as input (so the fill decides what it reads over land); a point that was missing in
any frame is masked: it counts neither in the statistics (``met2net data stats``), nor in the pixel-space loss terms
(the reconstruction and forecast MSE), nor in the evaluation's metrics. The mask is static, one (lat, lon) per
channel: land does not move, and a point that is sometimes missing is never scored rather than scored on a made-up
value. A frame missing whole is refused even with a fill policy (masking all of its points would mask the variable
everywhere): drop or interpolate such times in the source.

On disk each shard with masked points holds ``valid`` (uint8, (channel, lat, lon), 1 where the point counts) for its
own frames, and convert writes the union over the shards into ``mask.h5`` beside ``index.json``, which records it
(``"mask": {"file", "sha256", "masked_points"}``). Without missing values nothing of this exists, and every number
is what it was before masks existed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from met2net.data.atomic import atomic_write, sha256_file
from met2net.errors import UserError

MASK_NAME = "mask.h5"


def policy(missing: dict[str, str], name: str) -> str | float:
    """The policy of variable ``name``: ``error``, ``mean``, ``zero`` or a fill value (config validated it)."""
    text = missing.get(name, "error")
    return text if text in ("error", "mean", "zero") else float(text)


def fill(values: np.ndarray, how: str | float, bad: np.ndarray, where: str, times: np.ndarray) -> np.ndarray:
    """Fill ``values`` (time, lat, lon) in place where ``bad`` by the policy ``how`` (not ``error``) and return the
    points that count: those valid in every frame. ``where`` names the source and variable, ``times`` the frames, in
    errors."""
    whole = np.flatnonzero(bad.all(axis=(1, 2)))
    if whole.size:
        raise UserError(
            f"{where} is missing at every point in {whole.size} frame(s), the first at {str(times[whole[0]])[:16]}; "
            "nothing written. A fill policy masks points, not times, and masking every point would leave nothing of "
            "the variable: drop those times from the source or fill them in time (xarray: .interpolate_na('time'))"
        )
    if how == "mean":
        sums = np.where(bad, 0.0, values).sum(axis=(1, 2), dtype=np.float64)
        means = sums / (~bad).sum(axis=(1, 2))
        values[bad] = np.broadcast_to(means[:, None, None], values.shape)[bad]
    else:
        values[bad] = 0.0 if how == "zero" else how
    return ~bad.any(axis=0)


def union(valids: list[np.ndarray | None]) -> np.ndarray | None:
    """The points valid in every shard ((channel, lat, lon) bool), or None when no shard masks any."""
    masks = [v for v in valids if v is not None]
    if not masks:
        return None
    return np.logical_and.reduce(masks)


def write_mask(directory: Path, channels: list[str], valid: np.ndarray) -> dict:
    """Write ``mask.h5`` atomically and return index.json's ``mask`` entry."""
    path = Path(directory) / MASK_NAME

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["channels"] = channels
            f.create_dataset("valid", data=valid.astype(np.uint8))

    atomic_write(path, write)
    counts = (~valid).sum(axis=(1, 2))
    masked = {c: int(n) for c, n in zip(channels, counts, strict=True) if n}
    return {"file": MASK_NAME, "sha256": sha256_file(path), "masked_points": masked}


def read_mask(directory: str | Path, index: dict) -> np.ndarray | None:
    """The valid points ((channel, lat, lon) bool, index.json's channel order) of a shard directory, or None when
    its index records no mask; its checksum is checked (a mask file is small)."""
    entry = index.get("mask")
    if not entry:
        return None
    path = Path(directory) / entry["file"]
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        state = "missing" if not path.is_file() else "does not match the checksum in index.json"
        raise UserError(f"{path}: {state}; re-run met2net data convert --force to rewrite the shards and their mask")
    with h5py.File(path, "r") as f:
        valid = f["valid"][()].astype(bool)
    want = (len(index["channels"]), len(index["lat"]), len(index["lon"]))
    if valid.shape != want:
        raise UserError(f"{path}: a mask of shape {valid.shape} for index.json's {want}; re-run met2net data convert")
    return valid


def select(valid: np.ndarray | None, channels: list[int]) -> np.ndarray | None:
    """The mask of the model's channels (indices into the shards' channels), or None when those are all unmasked."""
    if valid is None:
        return None
    chosen = valid[channels]
    return None if chosen.all() else chosen
