"""The consolidated format's names, its error, and what a model of a given configuration holds.

A consolidated directory ``OUT/`` holds ``model.safetensors`` (fp32 weights; integer buffers keep their dtype) and
``met2net.json`` (everything needed to use them: config, variables, grid, statistics, provenance, checksums). The
same metadata, less the checksum of the weights file itself, is in the safetensors header under ``"met2net"``, so a
shipped ``model.safetensors`` alone still says what it is (``docs/checkpoints.md``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from met2net.config import ModelConfig
from met2net.training.layout import CheckpointError

WEIGHTS = "model.safetensors"
META = "met2net.json"
FORMAT = 1
HEADER_KEY = "met2net"  # the safetensors header's __metadata__ entry that holds met2net.json (as JSON text)
WEIGHT_SETS = ("inference", "all")  # inference: E_q, D_q, T_q and their buffers; all: the momentum copies too


# Met2Net's trained copies and their momentum copies (met2net.model.met2net.TRAINED / COPIES; the model imports
# torch, which consolidation never needs: tests/unit/test_consolidate.py checks they are the same)
TRAINED = ("encoders_q", "decoders_q", "translator_q")
COPIES = ("encoders_k", "decoders_k", "translator_k")
# the model's only buffers: BatchNorm running statistics (checked against Met2Net in the same test)
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class ConsolidateError(CheckpointError):
    """A checkpoint that cannot be consolidated, or a consolidated file that cannot be used; the message names the
    file and what to do."""


def model_config(config: dict[str, Any]) -> ModelConfig:
    """The ``ModelConfig`` of a ``Config.to_dict()`` (a checkpoint's or a consolidated file's ``config``)."""
    return ModelConfig(**{k: v for k, v in config["model"].items() if k in ModelConfig.__dataclass_fields__})


def is_copy(name: str) -> bool:
    """A momentum copy's tensor (``encoders_k``, ``decoders_k``, ``translator_k``)."""
    return name.split(".", 1)[0] in COPIES


def is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES


def in_weights(name: str, weights: str) -> bool:
    """Whether tensor ``name`` belongs to a ``weights`` set ("inference": no momentum copies; "all")."""
    if weights not in WEIGHT_SETS:
        raise ConsolidateError(f"--weights {weights!r}: expected one of {', '.join(WEIGHT_SETS)}")
    return weights == "all" or not is_copy(name)


def trained_twin(name: str) -> str:
    """The trained copy's name of a momentum copy's tensor: ``translator_k.x`` → ``translator_q.x``."""
    head, _, rest = name.partition(".")
    return f"{TRAINED[COPIES.index(head)]}.{rest}"


def infer_model(shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Model configuration values read from a state dict's shapes (name → shape, our names), and where each was
    read (our key, and the reference's of MODEL.md §5)."""

    def indices(pattern: str) -> list[int]:
        return sorted({int(m.group(1)) for k in shapes if (m := re.match(pattern, k))})

    conv0, conv_in = "encoders_q.0.layers.0.conv.weight", "translator_q.conv_in.weight"
    try:
        s0, s_in = tuple(shapes[conv0]), tuple(shapes[conv_in])
    except KeyError as e:
        raise ConsolidateError(f"no {e} (reference: enc_q_list.0.enc.0.conv.conv.weight, hid_q.conv1.weight)") from None
    hid_s, hid_t = int(s0[0]), int(s_in[0])
    values = {
        "variables": len(indices(r"encoders_q\.(\d+)\.")),
        "num_spatial_layers": len(indices(r"encoders_q\.0\.layers\.(\d+)\.")),
        "hid_s": hid_s,
        "hid_t": hid_t,
        "num_translator_blocks": len(indices(r"translator_q\.blocks\.(\d+)\.")),
        "in_frames": int(s_in[1]) // hid_s,
        "out_frames": int(s_in[1]) // hid_s,
    }
    frames = f"{conv_in} {s_in} / hid_s (reference hid_q.conv1.weight)"
    where = {
        "variables": "encoders_q.<i> (reference enc_q_list.<i>)",
        "num_spatial_layers": "encoders_q.0.layers.<j> (reference enc_q_list.0.enc.<j>)",
        "hid_s": f"{conv0} {s0} (reference enc_q_list.0.enc.0.conv.conv.weight)",
        "hid_t": f"{conv_in} {s_in} (reference hid_q.conv1.weight)",
        "num_translator_blocks": "translator_q.blocks.<l> (reference hid_q.layers.<l>)",
        "in_frames": frames,
        "out_frames": frames,
    }
    return values, where
