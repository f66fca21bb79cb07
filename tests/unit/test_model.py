import math
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from met2net.config import load_config
from met2net.model.met2net import Met2Net, count_parameters
from met2net.model.reference_keys import convert_reference_state_dict, reference_key_to_ours

ROOT = Path(__file__).resolve().parents[2]
PAPER = {"5.625": ROOT / "configs/mv5_5.625.yaml", "1.40625": ROOT / "configs/mv5_1.40625.yaml"}


@pytest.fixture(scope="module", params=["5.625", "1.40625"])
def paper(request):
    cfg = load_config(PAPER[request.param])
    return request.param, cfg, Met2Net(cfg.model)


def test_parameter_counts_match_the_reference(paper):
    name, _, model = paper
    trainable, total = {"5.625": (8_632_869, 17_265_738), "1.40625": (8_957_829, 17_915_658)}[name]
    assert count_parameters(model, trainable_only=True) == trainable
    assert count_parameters(model) == total
    enc, dec = {"5.625": (9_696, 46_401), "1.40625": (28_320, 92_769)}[name]
    assert [count_parameters(e) for e in model.encoders_q] == [enc] * 5
    assert [count_parameters(d) for d in model.decoders_q] == [dec] * 5
    assert count_parameters(model.translator_q) == 8_352_384


def test_shapes_at_every_stage(paper):
    _, cfg, model = paper
    m = cfg.model
    h, w = m.latent_grid
    assert (h, w) == (16, 32)
    x = torch.randn(2, 12, 5, *m.grid)
    frames = x.reshape(24, 5, *m.grid)[:, :1]
    assert model.encoders_q[0](frames).shape == (24, 32, h, w)
    z = Met2Net.encode(model.encoders_q, x)
    assert z.shape == (2, 5, 12 * 32, h, w)
    assert model.translator_q.conv_in(z[:, 0]).shape == (2, 256, h, w)
    assert model.translator_q(z).shape == z.shape
    assert model.decoders_q[0](torch.randn(24, 32, h, w)).shape == (24, 1, *m.grid)
    assert Met2Net.decode(model.decoders_q, z, 12).shape == x.shape
    assert model.predict(x).shape == x.shape


def test_latent_layout_is_frame_major_per_variable(small_cfg):
    """Channel t·S + s of variable i is encoder i's channel s on frame t."""
    model = Met2Net(small_cfg.model)
    x = torch.randn(2, 2, 3, 8, 16)
    z = Met2Net.encode(model.encoders_q, x)
    s = small_cfg.model.hid_s
    direct = model.encoders_q[2](x[:, 1, 2:3])
    torch.testing.assert_close(z[:, 2, s : 2 * s], direct, rtol=0, atol=0)


def test_init_follows_the_reference():
    torch.manual_seed(1)
    cfg = load_config(PAPER["5.625"])
    model = Met2Net(cfg.model)
    conv = model.encoders_q[0].layers[1].conv
    assert abs(conv.weight.std().item() - 0.02) < 0.002 and conv.weight.abs().max() <= 2.0
    assert torch.all(conv.bias == 0)
    norm = model.decoders_q[3].layers[0].norm
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    readout = model.decoders_q[0].readout.weight  # PyTorch default: U(±1/sqrt(fan_in))
    assert readout.abs().max() <= 1 / math.sqrt(32) and readout.std() > 0.05
    tau = model.translator_q.blocks[0].tau
    for conv, fan_out in ((tau.mlp_in, 1024), (tau.mlp_dw, 9), (tau.mlp_out, 256)):
        assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.05
        assert torch.all(conv.bias == 0)
    assert torch.all(tau.scale_attn == 0.01) and torch.all(tau.scale_mlp == 0.01)
    assert abs(tau.proj_in.weight.std().item() - 1 / math.sqrt(3 * 256)) < 0.002  # default init
    blocks = model.translator_q.blocks
    for p0, p7 in zip(blocks[0].parameters(), blocks[7].parameters()):
        assert torch.equal(p0, p7)  # deep copies of one block, as the reference
    for q, k in (("encoders_q", "encoders_k"), ("decoders_q", "decoders_k"), ("translator_q", "translator_k")):
        for pq, pk in zip(getattr(model, q).parameters(), getattr(model, k).parameters()):
            assert torch.equal(pq, pk) and not pk.requires_grad and pq.requires_grad


def test_end_to_end_model_has_no_copies(small_cfg):
    model = Met2Net(small_cfg.model, with_copies=False)
    assert not hasattr(model, "translator_k")
    assert count_parameters(model) == count_parameters(model, trainable_only=True)


# --- importer: a reference state dict built from MODEL.md §5's naming scheme ------------------


def reference_scheme(c: int, n_s: int, n_t: int, s: int = 32, d: int = 256, t: int = 12) -> dict[str, tuple]:
    keys: dict[str, tuple] = {}
    for copy in "qk":
        for i in range(c):
            for j in range(n_s):
                cin = 1 if j == 0 else s
                keys[f"enc_{copy}_list.{i}.enc.{j}.conv.conv.weight"] = (s, cin, 3, 3)
                keys[f"enc_{copy}_list.{i}.enc.{j}.conv.conv.bias"] = (s,)
                up = j % 2 == 0  # decoder upsamples first: reversed [plain, down, ...]
                sub = "conv.conv.0" if up else "conv.conv"
                keys[f"dec_{copy}_list.{i}.dec.{j}.{sub}.weight"] = (4 * s if up else s, s, 3, 3)
                keys[f"dec_{copy}_list.{i}.dec.{j}.{sub}.bias"] = (4 * s if up else s,)
                for part in ("enc", "dec"):
                    for wb in ("weight", "bias"):
                        keys[f"{part}_{copy}_list.{i}.{part}.{j}.conv.norm.{wb}"] = (s,)
            keys[f"dec_{copy}_list.{i}.readout.weight"] = (1, s, 1, 1)
            keys[f"dec_{copy}_list.{i}.readout.bias"] = (1,)
        h = f"hid_{copy}"
        keys.update(
            {
                f"{h}.conv1.weight": (d, t * s, 1, 1),
                f"{h}.conv1.bias": (d,),
                f"{h}.conv2.weight": (t * s, d, 1, 1),
                f"{h}.conv2.bias": (t * s,),
            }
        )
        for layer in range(n_t):
            p = f"{h}.layers.{layer}"
            for n in ("norm_1", "norm_2"):
                keys[f"{p}.{n}.weight"] = keys[f"{p}.{n}.bias"] = (d,)
            for n in ("q_Conv", "k_Conv", "v_Conv", "v_post_f"):
                keys[f"{p}.attn_1.{n}.0.weight"] = (d, d, 1, 1)
                keys[f"{p}.attn_1.{n}.1.weight"] = keys[f"{p}.attn_1.{n}.1.bias"] = (d,)
            f = f"{p}.ff.ff1"
            keys[f"{f}.layer_scale_1"] = keys[f"{f}.layer_scale_2"] = (d,)
            for n in ("norm1", "norm2"):
                for b in ("weight", "bias", "running_mean", "running_var"):
                    keys[f"{f}.{n}.{b}"] = (d,)
                keys[f"{f}.{n}.num_batches_tracked"] = ()
            sgu = f"{f}.attn.spatial_gating_unit"
            for n, shape in (("proj_1", (d, d, 1, 1)), ("proj_2", (d, d, 1, 1))):
                keys[f"{f}.attn.{n}.weight"], keys[f"{f}.attn.{n}.bias"] = shape, (d,)
            for n, shape in (("conv0", (d, 1, 5, 5)), ("conv_spatial", (d, 1, 7, 7)), ("conv1", (d, d, 1, 1))):
                keys[f"{sgu}.{n}.weight"], keys[f"{sgu}.{n}.bias"] = shape, (d,)
            keys[f"{sgu}.fc.0.weight"], keys[f"{sgu}.fc.2.weight"] = (16, d), (d, 16)
            keys[f"{f}.mlp.fc1.weight"], keys[f"{f}.mlp.fc1.bias"] = (4 * d, d, 1, 1), (4 * d,)
            keys[f"{f}.mlp.dwconv.dwconv.weight"], keys[f"{f}.mlp.dwconv.dwconv.bias"] = (4 * d, 1, 3, 3), (4 * d,)
            keys[f"{f}.mlp.fc2.weight"], keys[f"{f}.mlp.fc2.bias"] = (d, 4 * d, 1, 1), (d,)
    return keys


@pytest.mark.parametrize("prefix", ["", "model."])
def test_importer_covers_every_reference_key(paper, prefix):
    name, cfg, model = paper
    n_s = cfg.model.num_spatial_layers
    scheme = reference_scheme(5, n_s, 8)
    ref = {prefix + k: torch.zeros(shape) for k, shape in scheme.items()}
    ours, dropped = convert_reference_state_dict(ref)
    expected = model.state_dict()
    assert set(ours) == set(expected)
    assert all(ours[k].shape == expected[k].shape for k in ours)
    assert sorted(dropped) == sorted(k for k in ref if ".spatial_gating_unit.fc." in k)
    assert len(dropped) == 2 * 8 * 2  # two Linear weights per block, both copies
    dead = sum(v.numel() for k, v in ref.items() if k in dropped) // 2
    assert dead == 65_536  # MODEL.md §4: the dead squeeze-excitation parameters


def test_importer_rejects_foreign_keys():
    with pytest.raises(KeyError, match="hid_q.extra.weight"):
        reference_key_to_ours("hid_q.extra.weight")


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch, heads", [(1, 8), (3, 2), (2, 1)])
def test_fast_kernels_equal_the_reference_layers(batch, heads, channels_last, device, monkeypatch):
    """The Translator block with the fused attention and the phase-split dilated convolution gives the plain
    layers' output and gradients, up to float rounding (1e-5 relative); on a GPU too (tools/gpu_smoke.sh runs it),
    with TF32 off, which would round both paths' convolutions to 1e-3."""
    from met2net.model.translator import TranslatorBlock

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    fast = TranslatorBlock(32, heads, drop_path=0.0).train().to(device)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    plain = deepcopy(fast)
    for m in plain.modules():
        if hasattr(m, "fast_kernels"):
            m.fast_kernels = False
    x = torch.randn(batch, 5, 32, 10, 14, device=device)
    results = []
    for block in (fast, plain):
        xi = x.clone().requires_grad_()
        out = block(xi)
        (out * torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)).sum().backward()
        results.append([out, xi.grad, *[p.grad for p in block.parameters()]])
    scale = max(g.abs().max().item() for g in results[1][1:])  # a bias that a norm follows has ~0 gradient
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_the_phase_split_convolution_keeps_channels_last():
    """The phase split gathers and scatters the phases in the channels-last order, so the convolution reads its
    input and the next 1×1 convolution reads the result without a layout conversion; the values are the plain
    dilated convolution's."""
    from met2net.model.translator import PhaseDilatedConv2d

    torch.manual_seed(0)
    conv = PhaseDilatedConv2d(8, 8, 7, padding=9, groups=8, dilation=3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 10, 14).to(memory_format=torch.channels_last)
    out = conv(x)
    assert out.shape == x.shape
    assert out.stride(1) == 1, "the result is not channels-last"
    torch.testing.assert_close(out, F.conv2d(x, conv.weight, conv.bias, padding=9, dilation=3, groups=8))
