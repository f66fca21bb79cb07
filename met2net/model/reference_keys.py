"""Import weights of the authors' reference implementation (MODEL.md §5).

The reference names modules after OpenSTL (``enc_q_list``, ``hid_q.layers.3.ff.ff1...``);
ours say what they hold. Its squeeze-excitation branch (``spatial_gating_unit.fc``) is never
reached by its forward pass, so those keys are the only ones dropped.
"""

from __future__ import annotations

import re

import torch

_COPY = r"(?P<copy>[qk])"
_RULES: list[tuple[str, str]] = [
    (rf"enc_{_COPY}_list\.(\d+)\.enc\.(\d+)\.conv\.conv\.(weight|bias)", r"encoders_\g<copy>.\2.layers.\3.conv.\4"),
    (rf"enc_{_COPY}_list\.(\d+)\.enc\.(\d+)\.conv\.norm\.(weight|bias)", r"encoders_\g<copy>.\2.layers.\3.norm.\4"),
    (
        rf"dec_{_COPY}_list\.(\d+)\.dec\.(\d+)\.conv\.conv(?:\.0)?\.(weight|bias)",
        r"decoders_\g<copy>.\2.layers.\3.conv.\4",
    ),
    (rf"dec_{_COPY}_list\.(\d+)\.dec\.(\d+)\.conv\.norm\.(weight|bias)", r"decoders_\g<copy>.\2.layers.\3.norm.\4"),
    (rf"dec_{_COPY}_list\.(\d+)\.readout\.(weight|bias)", r"decoders_\g<copy>.\2.readout.\3"),
    (rf"hid_{_COPY}\.conv1\.(weight|bias)", r"translator_\g<copy>.conv_in.\2"),
    (rf"hid_{_COPY}\.conv2\.(weight|bias)", r"translator_\g<copy>.conv_out.\2"),
    (rf"hid_{_COPY}\.layers\.(\d+)\.norm_1\.(weight|bias)", r"translator_\g<copy>.blocks.\2.norm_attn.\3"),
    (rf"hid_{_COPY}\.layers\.(\d+)\.norm_2\.(weight|bias)", r"translator_\g<copy>.blocks.\2.norm_out.\3"),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.attn_1\.([qkv])_Conv\.0\.weight",
        r"translator_\g<copy>.blocks.\2.attn.\3.conv.weight",
    ),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.attn_1\.([qkv])_Conv\.1\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.attn.\3.norm.\4",
    ),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.attn_1\.v_post_f\.0\.weight",
        r"translator_\g<copy>.blocks.\2.attn.out.conv.weight",
    ),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.attn_1\.v_post_f\.1\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.attn.out.norm.\3",
    ),
    (rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.layer_scale_1", r"translator_\g<copy>.blocks.\2.tau.scale_attn"),
    (rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.layer_scale_2", r"translator_\g<copy>.blocks.\2.tau.scale_mlp"),
    (rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.(norm[12])\.(\w+)", r"translator_\g<copy>.blocks.\2.tau.\3.\4"),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.attn\.proj_1\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.tau.proj_in.\3",
    ),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.attn\.proj_2\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.tau.proj_out.\3",
    ),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.attn\.spatial_gating_unit\.conv0\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.tau.lka_dw.\3",
    ),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.attn\.spatial_gating_unit\.conv_spatial\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.tau.lka_dilated.\3",
    ),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.attn\.spatial_gating_unit\.conv1\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.tau.lka_pw.\3",
    ),
    (rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.mlp\.fc1\.(weight|bias)", r"translator_\g<copy>.blocks.\2.tau.mlp_in.\3"),
    (
        rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.mlp\.dwconv\.dwconv\.(weight|bias)",
        r"translator_\g<copy>.blocks.\2.tau.mlp_dw.\3",
    ),
    (rf"hid_{_COPY}\.layers\.(\d+)\.ff\.ff1\.mlp\.fc2\.(weight|bias)", r"translator_\g<copy>.blocks.\2.tau.mlp_out.\3"),
]
_COMPILED = [(re.compile(p + r"$"), r) for p, r in _RULES]
DEAD_BRANCH = re.compile(r"hid_[qk]\.layers\.\d+\.ff\.ff1\.attn\.spatial_gating_unit\.fc\.")


def reference_key_to_ours(key: str) -> str | None:
    """Our name for a reference key; None for the dead squeeze-excitation branch.
    Raises KeyError for a key that belongs to neither."""
    key = key.removeprefix("model.")
    if DEAD_BRANCH.match(key):
        return None
    for pattern, repl in _COMPILED:
        if pattern.match(key):
            return pattern.sub(repl, key)
    raise KeyError(f"reference checkpoint key {key!r} matches no known Met²Net module")


def convert_reference_state_dict(
    ref: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Reference (or Lightning ``state_dict``) → (our state dict, dropped dead keys)."""
    ours: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in ref.items():
        new = reference_key_to_ours(key)
        if new is None:
            dropped.append(key)
        else:
            ours[new] = value
    return ours, dropped


def load_reference_weights(model: torch.nn.Module, path: str) -> list[str]:
    """Load a reference checkpoint file (plain or Lightning) into ``model``; strict on
    every key and shape, so a checkpoint of another configuration fails clearly."""
    blob = torch.load(path, map_location="cpu", weights_only=True)  # a state dict: tensors only
    ref = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    ours, dropped = convert_reference_state_dict(ref)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    wrong = [k for k in ours if k in expected and ours[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = [
            f"missing: {missing[:5]}" * bool(missing),
            f"unexpected: {unexpected[:5]}" * bool(unexpected),
            ", ".join(f"{k}: {tuple(ours[k].shape)} vs ours {tuple(expected[k].shape)}" for k in wrong[:5]),
        ]
        raise ValueError(
            f"{path}: does not fit this model configuration ("
            + "; ".join(d for d in details if d)
            + "); check model.variables, grid, hid_s, hid_t and the layer counts"
        )
    model.load_state_dict(ours)
    return dropped
