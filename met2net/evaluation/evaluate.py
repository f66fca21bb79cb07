"""`met2net evaluate`: the model against persistence and climatology on a split, per variable and lead time.

Samples are scored in blocks of ``batch_size`` consecutive windows; block b is scored by rank b mod world size, and
the blocks' sums are added in block order at the end. A block is the same computation whichever rank scores it,
so the table from N ranks equals the one from 1 rank bit for bit, and every window is counted exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from met2net.errors import UserError
from met2net.evaluation.climatology import Climatology
from met2net.evaluation.data import EvalData, eval_data
from met2net.evaluation.metrics import latitude_weights, score_sums, scores
from met2net.evaluation.source import Loaded, load_source

MODELS = ("met2net", "persistence", "climatology")
LEAD_UNITS = {"hours": "h", "months": "mo"}  # lead times count hours, or calendar months for monthly data


@dataclass
class Evaluation:
    """Merged sums (model, lead, variable, SUMS) over ``count`` forecasts, and what they describe."""

    sums: np.ndarray
    count: int
    variables: list[str]
    units: list[str]
    leads: list[int]  # lead times in lead_unit
    source: str
    split: str
    rollout: int
    world_size: int = 1
    rank: int = 0  # this process's; every rank holds the same merged sums
    sample: dict[str, np.ndarray] = field(default_factory=dict)  # first window: truth, forecast (L, C, H, W)
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    lead_unit: str = "hours"  # or "months" (monthly data)

    @property
    def lead_hours(self) -> list[int]:
        if self.lead_unit != "hours":
            raise ValueError(f"the leads of this evaluation count {self.lead_unit}, not hours: use .leads")
        return self.leads

    def lead_label(self, lead: int) -> str:
        """'24 h', '3 mo'."""
        return f"{lead} {LEAD_UNITS[self.lead_unit]}"

    def table(self) -> dict[str, dict[str, np.ndarray]]:
        """model → metric → (lead, variable)."""
        persistence = self.sums[MODELS.index("persistence")]
        return {m: scores(self.sums[i], self.count, persistence) for i, m in enumerate(MODELS)}


def forecast(model: torch.nn.Module, x: torch.Tensor, rollout: int) -> torch.Tensor:
    """``rollout`` forecasts, each from the latest ``in_frames`` frames of inputs and forecasts so far: (B, rollout ·
    out_frames, C, H, W). One step is the model's plain forecast."""
    in_frames = x.shape[1]
    history, outputs = x, []
    for _ in range(rollout):
        y = model.predict(history[:, -in_frames:])
        outputs.append(y)
        history = torch.cat([history, y], dim=1)
    return torch.cat(outputs, dim=1)


def score_block(
    loaded: Loaded,
    data: EvalData,
    clim: Climatology,
    indices: list[int],
    rollout: int,
    weights: np.ndarray,
    device: torch.device,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sums (model, lead, variable, SUMS) of the windows ``indices``, and their physical truth and forecast."""
    x, y = data.windows[indices]
    with torch.no_grad():
        pred = forecast(loaded.model, x.to(device), rollout).cpu().double().numpy()
    mean, std = loaded.mean[:, None, None], loaded.std[:, None, None]
    truth = y.double().numpy() * std + mean
    model = pred * std + mean
    persistence = np.broadcast_to(x[:, -1:].double().numpy() * std + mean, truth.shape)
    clim_model = clim.at(np.stack([data.valid_times(i)[data.in_frames :] for i in indices])).astype(np.float64)
    sums = [score_sums(f, truth, clim_model, weights, data.valid)[0] for f in (model, persistence, clim_model)]
    return np.stack(sums), {"truth": truth[0], "forecast": model[0]}


def evaluate(
    source: str | Path,
    split: str = "test",
    overrides: list[str] = (),
    rollout: int = 1,
    batch_size: int = 0,
    progress: bool = True,
    window_days: int = 15,
) -> Evaluation:
    """Score ``source`` on ``split`` on this process's share of the windows; under a launcher (torchrun, srun,
    mpirun) every rank calls this and every rank returns the merged result."""
    if rollout < 1:
        raise UserError(f"--rollout {rollout}: expected at least 1")
    rank, world = _ranks()
    loaded = load_source(source, overrides)
    cfg = loaded.cfg
    leads = rollout * cfg.model.out_frames
    data = eval_data(cfg, loaded.mean, loaded.std, split, leads, window_days)
    if len(data.windows) == 0:
        given = getattr(cfg.data, split) or getattr(cfg.data, split + "_years")
        raise UserError(
            f"the {split} split (data.{split if getattr(cfg.data, split) else split + '_years'} {given}) has no "
            f"window of {cfg.model.in_frames} + {leads} frames; add data or lower --rollout"
        )
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    loaded.model.to(device)
    clim = data.climatology()
    weights = latitude_weights(data.lat)
    batch = batch_size or cfg.training.batch_size
    blocks = [list(range(lo, min(lo + batch, len(data.windows)))) for lo in range(0, len(data.windows), batch)]
    mine = range(rank, len(blocks), world)
    results: dict[int, np.ndarray] = {}
    sample: dict[str, np.ndarray] = {}
    for b in tqdm(mine, desc=f"evaluate {split}", disable=True if rank or not progress else None):
        results[b], first = score_block(loaded, data, clim, blocks[b], rollout, weights, device)
        if b == 0:
            sample = first
    results = _gather(results, world)
    sums = np.sum([results[b] for b in range(len(blocks))], axis=0)  # block order: the same bits on any world size
    return Evaluation(
        sums,
        len(data.windows),
        data.variables,
        data.units,
        [data.step.size * (k + 1) for k in range(leads)],
        loaded.description,
        split,
        rollout,
        world,
        rank,
        sample,
        data.lat,
        data.lon,
        data.step.unit,
    )


def _ranks() -> tuple[int, int]:
    """(rank, world size): under a launcher, the process group is started here (gloo or NCCL)."""
    from met2net.distributed.env import discover, free_port

    info = discover(os.environ, default_port=free_port())
    if info.world_size > 1 and not torch.distributed.is_initialized():
        from met2net.distributed.setup import init_process_group

        init_process_group(info)
    return info.rank, info.world_size


def _gather(results: dict[int, np.ndarray], world: int) -> dict[int, np.ndarray]:
    if world == 1:
        return results
    everyone: list[dict[int, np.ndarray] | None] = [None] * world
    torch.distributed.all_gather_object(everyone, results)
    merged: dict[int, np.ndarray] = {}
    for part in everyone:
        merged.update(part or {})
    return merged
