"""met2net.training.momentum: the frozen copies' blend, and a model that knows nothing of DeepSpeed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from met2net.model.met2net import Met2Net
from met2net.training.momentum import (
    blend,
    momentum_update,
    rebind_translator_copy,
    update_codec_copies,
    update_translator_copy,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "met2net" / "model"
PARTS = {"codec": ("encoders", "decoders"), "translator": ("translator",)}


def perturbed(cfg) -> Met2Net:
    """A model whose trained copies differ from their frozen twins."""
    model = Met2Net(cfg.model)
    with torch.no_grad():
        for name in ("encoders_q", "decoders_q", "translator_q"):
            for p in getattr(model, name).parameters():
                p.add_(torch.randn_like(p))
    return model


def snapshot(model: Met2Net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("part", ["codec", "translator"])
def test_pairs_follow_parameter_order_and_shapes(small_cfg, part):
    model = Met2Net(small_cfg.model)
    pairs = model.momentum_pairs(part)
    q_named = [(f"{m}_q.{n}", p) for m in PARTS[part] for n, p in getattr(model, f"{m}_q").named_parameters()]
    k_named = [(f"{m}_k.{n}", p) for m in PARTS[part] for n, p in getattr(model, f"{m}_k").named_parameters()]
    assert len(pairs) == len(q_named) == len(k_named) > 0
    for (q, k), (qn, qp), (kn, kp) in zip(pairs, q_named, k_named):
        assert q is qp and k is kp
        assert qn.replace("_q.", "_k.", 1) == kn
        assert q.shape == k.shape and q.dtype == k.dtype
        assert q.requires_grad and not k.requires_grad


def test_pairs_refuse_unknown_parts_and_models_without_copies(small_cfg):
    with pytest.raises(ValueError, match="unknown momentum part"):
        Met2Net(small_cfg.model).momentum_pairs("encoders")
    with pytest.raises(ValueError, match="with_copies=False"):
        Met2Net(small_cfg.model, with_copies=False).momentum_pairs("codec")


def test_zero_momentum_copies_exactly_and_touches_only_its_part(small_cfg):
    model = perturbed(small_cfg)
    before = snapshot(model)
    update_codec_copies(model, 0.0)
    after = snapshot(model)
    for q, k in model.momentum_pairs("codec"):
        assert torch.equal(k, q)
    for name, value in before.items():
        if not name.startswith(("encoders_k", "decoders_k")):
            assert torch.equal(after[name], value), name


@pytest.mark.parametrize("update", [update_codec_copies, update_translator_copy])
def test_momentum_blend_is_the_references_arithmetic_bitwise(small_cfg, update):
    m = 0.9
    model = perturbed(small_cfg)
    part = "codec" if update is update_codec_copies else "translator"
    pairs = model.momentum_pairs(part)
    expected = [k.detach() * m + q.detach() * (1 - m) for q, k in pairs]
    pointers = [k.data_ptr() for _, k in pairs]
    update(model, m)
    for (_, k), e, ptr in zip(pairs, expected, pointers):
        assert torch.equal(k, e)
        assert k.data_ptr() == ptr  # in place: a pending backward sees the same tensors
    assert any(not torch.equal(q, k) for q, k in pairs)  # a blend, not a copy


def test_rebind_gives_the_same_weights_as_new_tensors(small_cfg):
    m = 0.9
    a, b = perturbed(small_cfg), perturbed(small_cfg)
    b.load_state_dict(a.state_dict())
    pointers = [k.data_ptr() for _, k in b.momentum_pairs("translator")]
    update_translator_copy(a, m)
    rebind_translator_copy(b, m)
    for (_, ka), (_, kb), ptr in zip(a.momentum_pairs("translator"), b.momentum_pairs("translator"), pointers):
        assert torch.equal(ka, kb)
        assert kb.data_ptr() != ptr


def test_blend_on_tensors():
    q, k = torch.randn(7), torch.randn(7)
    k0 = k.clone()
    blend([(q, k)], 0.0)
    assert torch.equal(k, q)
    k.copy_(k0)
    blend([(q, k)], 0.3)
    assert torch.equal(k, k0 * 0.3 + q * (1 - 0.3))


def fake_zero3(shape: tuple[int, ...], part: torch.Tensor | None, whole: bool) -> torch.nn.Parameter:
    """A parameter as ZeRO-3 leaves it: this rank's partition in ``ds_tensor``, ``data`` whole or empty; with
    no separate partition, the whole data is the partition (one rank)."""
    p = torch.nn.Parameter(torch.randn(shape) if whole else torch.empty(0), requires_grad=False)
    p.ds_tensor, p.ds_numel = (p.data if part is None else part), int(torch.Size(shape).numel())
    return p


def test_zero3_blends_partitions_and_whole_persistent_copies():
    m = 0.5
    # partitioned: data empty; persistent: data whole besides the partition; one rank: data is the partition
    q1, k1 = fake_zero3((4, 3), torch.randn(6), False), fake_zero3((4, 3), torch.randn(6), False)
    q2, k2 = fake_zero3((5,), torch.randn(3), True), fake_zero3((5,), torch.randn(3), True)
    q3, k3 = fake_zero3((2,), None, True), fake_zero3((2,), None, True)
    expected = {
        name: t.clone() * m + s.clone() * (1 - m)
        for name, t, s in (
            ("p1", k1.ds_tensor, q1.ds_tensor),
            ("p2", k2.ds_tensor, q2.ds_tensor),
            ("d2", k2.data, q2.data),
            ("p3", k3.ds_tensor, q3.ds_tensor),
        )
    }
    momentum_update([(q1, k1), (q2, k2), (q3, k3)], m)
    assert torch.equal(k1.ds_tensor, expected["p1"]) and k1.data.numel() == 0
    assert torch.equal(k2.ds_tensor, expected["p2"])
    assert torch.equal(k2.data, expected["d2"])
    assert torch.equal(k3.data, expected["p3"])  # blended once, not twice


FORBIDDEN = ("deepspeed", "met2net.compat", "met2net.training")


def forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module the file imports (relative imports resolved from met2net.model)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ["met2net", "model"][: 3 - node.level] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_model_source_knows_no_deepspeed(path):
    assert not [n for n in _imported_modules(path) if forbidden(n)]
    attributes = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    assert not attributes & {"ds_tensor", "ds_numel", "ds_shape", "ds_id", "GatheredParameters"}


def test_importing_the_model_loads_no_deepspeed():
    modules = [f"met2net.model.{p.stem}" for p in sorted(MODEL_DIR.glob("*.py")) if p.stem != "__init__"]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(*sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    assert "met2net.model.met2net" in loaded
    assert not [m for m in loaded if forbidden(m)]
