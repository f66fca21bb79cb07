"""The model to evaluate, from what a user points at: a run directory (its last round's most advanced stage), a
checkpoint directory, a stage directory, or a consolidated file — with the config and normalisation statistics
it was trained with, which travel with every checkpoint. Only the trained copies (E_q, D_q, T_q) are loaded:
inference needs no momentum copies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from met2net.config import Config, ConfigError, config_from_dict
from met2net.model.met2net import Met2Net
from met2net.training.checkpoint import load_meta, load_weights, resolve
from met2net.training.layout import stage_dir

# which stage of a run directory is its forecaster: stage two ends a pipeline round; implicit and end_to_end train
# everything at once; stage one alone is the last resort
STAGE_ORDER = ("stage2", "implicit", "end_to_end", "stage1")
TRAINED = ("encoders_q.", "decoders_q.", "translator_q.")


@dataclass
class Loaded:
    model: Met2Net  # eval mode, trained copies only
    cfg: Config
    mean: np.ndarray  # (C,) float64: the statistics the model was trained with
    std: np.ndarray
    description: str  # what was loaded, for reports: the checkpoint path, schedule and step
    meta: dict


def find_checkpoint(source: Path) -> Path:
    """A run directory → its last round's checkpoint of the most advanced stage; anything else → ``resolve``."""
    rounds = sorted(source.glob("round_*"), key=lambda p: int(p.name[6:]) if p.name[6:].isdigit() else -1)
    run = rounds[-1] if rounds and not (source / "checkpoints").is_dir() else source
    for schedule in STAGE_ORDER:
        if (stage_dir(run, schedule) / "latest").is_file():
            return resolve(stage_dir(run, schedule), None)
    return resolve(source, None)


def load_source(source: str | Path, overrides: list[str] = ()) -> Loaded:
    """The model, config and statistics of ``source``; ``overrides`` change the config (e.g. ``data.path`` when
    the data moved, ``data.test_years``) but never the model configuration."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory, checkpoint or consolidated file")
    state, meta, where = _read(path)
    if "config" not in meta:
        raise ConfigError(f"{where}: carries no config (written by an older met2net?); cannot rebuild the model")
    cfg = config_from_dict(meta["config"], f"{where} (its config)", list(overrides))
    changed = {k: (v, getattr(cfg.model, k)) for k, v in meta["config"]["model"].items() if getattr(cfg.model, k) != v}
    if changed:
        details = ", ".join(f"model.{k}: checkpoint {a!r}, override {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"{where}: the model configuration is the checkpoint's and cannot be overridden ({details})")
    stats = meta.get("stats")
    if not stats or stats.get("variables") != list(cfg.model.variables):
        raise ConfigError(
            f"{where}: no normalisation statistics for variables {cfg.model.variables} in its "
            "metadata; the model's inputs cannot be normalised as in training"
        )
    model = Met2Net(cfg.model, with_copies=False)
    trained = {k: v for k, v in state.items() if k.startswith(TRAINED)}
    try:
        model.load_state_dict(trained)
    except RuntimeError:
        raise ConfigError(
            f"{where}: its weights do not fit the model its config describes ({misfit(trained, model, cfg)}); "
            "a checkpoint's weights and its meta.json belong together: evaluate the checkpoint they came from"
        ) from None
    model.eval()
    description = f"{where} ({meta.get('schedule', '?')}, step {meta.get('step', '?')})"
    return Loaded(
        model,
        cfg,
        np.asarray(stats["mean"], dtype=np.float64),
        np.asarray(stats["std"], dtype=np.float64),
        description,
        meta,
    )


def misfit(state: dict[str, torch.Tensor], model: Met2Net, cfg: Config) -> str:
    """Why ``state`` does not load into ``model``, in one line: the config values its shapes contradict (as
    ``met2net consolidate`` names them), else the first tensors whose shapes differ and the count of missing and
    unexpected ones; never torch's list of every tensor."""
    from met2net.consolidate.format import ConsolidateError, infer_model

    try:
        found, where = infer_model({k: tuple(v.shape) for k, v in state.items()})
    except ConsolidateError:
        found, where = {}, {}
    m = cfg.model
    said = {k: len(m.variables) if k == "variables" else getattr(m, k) for k in found}
    wrong = [f"model.{k}: config {said[k]!r}, weights {found[k]!r} ({where[k]})" for k in found if said[k] != found[k]]
    if wrong:
        return "; ".join(wrong)
    expected = model.state_dict()
    shapes = [
        f"{k}: weights {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    parts = shapes[:3] + ([f"{len(shapes) - 3} more shapes differ"] if len(shapes) > 3 else [])
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(state dict, metadata, what was read) of a checkpoint or a consolidated file."""
    from met2net.consolidate import is_consolidated, load_consolidated

    if is_consolidated(path):
        state, meta = load_consolidated(path)
        return state, meta, path
    ckpt = find_checkpoint(path)
    return load_weights(ckpt), load_meta(ckpt), ckpt
