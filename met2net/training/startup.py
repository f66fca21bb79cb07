"""The start-up report: where every rank runs and with what, printed by rank 0 and kept in the run's ``start``
record (``metrics.jsonl``), so a slow or failed run on a cluster can be read without rerunning it.

It holds the rank → host → device mapping (GPU name, memory, UUID, the layout ``devices.select_device`` found and
what the task was told it may see), the torch, CUDA, NCCL and DeepSpeed versions, the precision, and the DeepSpeed
config in effect. Gathering the ranks' records is the first collective of a run, before the engine's, and every
rank checks the gathered list: two ranks on one physical GPU (a site that gave every task the same device) stop
there with the ranks named.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import torch

from met2net.distributed.devices import DeviceBindingError, DeviceChoice, duplicate_gpus, visible_devices
from met2net.distributed.env import RankInfo


def rank_record(info: RankInfo, choice: DeviceChoice, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """This rank's place and device; on a GPU its name, memory and UUID (what tells two ranks' GPUs apart)."""
    record: dict[str, Any] = {
        "rank": info.rank,
        "host": socket.gethostname(),
        "local_rank": info.local_rank,
        "device": choice.name,
        "layout": choice.layout,
        "visible": visible_devices(env),
    }
    if choice.index is not None:
        props = torch.cuda.get_device_properties(choice.index)
        uuid = getattr(props, "uuid", None)
        record.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1), uuid=uuid and str(uuid))
    if choice.note:
        record["note"] = choice.note
    return record


def check_placement(ranks: list[dict[str, Any]]) -> None:
    """Refuse ranks that share a GPU (run on every rank with the same list, so all of them stop)."""
    shared = duplicate_gpus(ranks)
    if shared:
        raise DeviceBindingError(
            f"{shared}: each task sees one GPU, but not a different one. Give each task its own "
            "(--gpus-per-task=1, or --gpu-bind=single:1), or start one rank per GPU of the node (docs/cluster.md, "
            "'GPU layouts')"
        )


def versions(cuda: bool) -> dict[str, str | None]:
    """The versions a GPU problem report needs; CUDA and NCCL as torch was built with them (None on the CPU)."""
    nccl = None
    if cuda and torch.distributed.is_nccl_available():
        raw = torch.cuda.nccl.version()  # a tuple (2, 21, 5) in recent torch, an int in older ones
        nccl = ".".join(map(str, raw)) if isinstance(raw, tuple) else str(raw)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "nccl": nccl,
        "deepspeed": _version("deepspeed"),
    }


def startup_report(
    ranks: list[dict[str, Any]], precision: str, deepspeed_config: dict[str, Any] | None
) -> dict[str, Any]:
    """What the ``start`` record keeps under ``startup``; ``deepspeed_config`` None for the plain-PyTorch engine."""
    cuda = any(r["device"] != "cpu" for r in ranks)
    return {
        "ranks": ranks,
        "versions": versions(cuda),
        "precision": precision,
        # on NVIDIA GPUs PyTorch lets cuDNN run fp32 convolutions in TF32 by default: what "fp32" meant for this run
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
        if cuda
        else None,
        "deepspeed_config": deepspeed_config,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as rank 0 prints it: a summary line, one line per rank, the DeepSpeed config on one line."""
    v = report["versions"]
    stack = f"torch {v['torch']}" + "".join(
        f", {name} {v[key]}" for key, name in (("cuda", "CUDA"), ("nccl", "NCCL"), ("deepspeed", "DeepSpeed")) if v[key]
    )
    tf32 = report.get("tf32")
    allowed = "" if tf32 is None else ", TF32 for " + (" and ".join(k for k, on in tf32.items() if on) or "nothing")
    lines = [f"met2net: {len(report['ranks'])} rank(s), precision {report['precision']}{allowed}, {stack}"]
    for r in report["ranks"]:
        gpu = f"  {r['gpu']} {r['memory_gib']} GiB" if "gpu" in r else ""
        lines.append(
            f"  rank {r['rank']:<3} {r['host']:<16} local {r['local_rank']:<2} {r['device']:<7}{gpu}  "
            f"({r['layout']}, CUDA_VISIBLE_DEVICES={r['visible']})"
        )
        if r.get("note"):
            lines.append(f"    note: {r['note']}")
    ds = report["deepspeed_config"]
    lines.append(
        "  deepspeed: "
        + (
            "off (one process, plain PyTorch)"
            if ds is None
            else ", ".join(f"{k}={v}" for k, v in ds.items() if k not in ("steps_per_print", "wall_clock_breakdown"))
        )
    )
    return "\n".join(lines)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
