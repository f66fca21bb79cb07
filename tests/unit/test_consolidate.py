"""Consolidated weights on one process: a plain-PyTorch checkpoint → model.safetensors + met2net.json, the metadata,
``--verify``, atomic output under damaged inputs, ``training.init_from`` from the file, and the import of the authors'
reference checkpoints (MODEL.md §5). The 2-rank DeepSpeed cases: tests/distributed/test_consolidate.py."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from met2net.cli import main
from met2net.config import load_config
from met2net.consolidate import (
    ConsolidateError,
    consolidate,
    import_reference,
    is_consolidated,
    load_consolidated,
    verify_consolidated,
)
from met2net.consolidate.format import model_config
from met2net.model.met2net import Met2Net
from met2net.model.reference_keys import load_reference_weights
from met2net.training import checkpoint
from tests.e2e.test_train_cli import TINY

ROOT = Path(__file__).resolve().parents[2]


def tiny(run_dir: Path, *extra: str):
    return load_config(
        ROOT / "configs/quickstart.yaml",
        [
            *TINY,
            f"run.dir={run_dir}",
            "training.progress=false",
            "training.max_steps=2",
            "training.val_every=2",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def local_ckpt(tmp_path_factory) -> Path:
    """A stage-one checkpoint of the plain-PyTorch engine (one process)."""
    from met2net.train import run_train

    run = tmp_path_factory.mktemp("local") / "run"
    assert run_train(tiny(run, "training.schedule=stage1")).exit_code == 0
    return run / "checkpoints/stage1/step_2"


def resign(ckpt: Path) -> None:
    """Recompute meta.json's checksums and COMPLETE, as if the files had been written that way."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ckpt.iterdir())
        if p.is_file() and p.name not in ("meta.json", "COMPLETE")
    }
    text = json.dumps(meta, indent=2)
    (ckpt / "meta.json").write_text(text)
    (ckpt / "COMPLETE").write_text(hashlib.sha256(text.encode()).hexdigest())


# -- a plain-PyTorch checkpoint ---------------------------------------------------------------------------------
@pytest.mark.parametrize("weights, copies", [("inference", False), ("all", True)])
def test_local_checkpoint_consolidates_to_exactly_its_weights(local_ckpt, tmp_path, weights, copies):
    out = consolidate(local_ckpt, tmp_path / "out", weights)
    assert sorted(p.name for p in out.iterdir()) == ["met2net.json", "model.safetensors"]
    state, meta = load_consolidated(out)
    gathered = torch.load(local_ckpt / "model.pt", weights_only=True)
    model = Met2Net(model_config(meta["config"]), with_copies=copies)
    assert list(state) == list(model.state_dict())  # exactly the model's tensors, in its order
    assert [k for k in state if not torch.equal(state[k], gathered[k])] == []
    assert {v.dtype for v in state.values()} == {torch.float32, torch.int64}  # int64: num_batches_tracked
    model.load_state_dict(state)  # strict
    assert meta["weights"] == weights and verify_consolidated(out) == []
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())


def test_metadata_says_everything_needed_to_use_the_weights(local_ckpt, tmp_path):
    out = consolidate(local_ckpt.parent, tmp_path / "out")  # a stage directory: its latest
    meta = json.loads((out / "met2net.json").read_text())
    source = json.loads((local_ckpt / "meta.json").read_text())
    assert meta["config"] == source["config"] and meta["model"] == source["model"] == source["config"]["model"]
    assert meta["stats"] == source["stats"] and len(meta["stats"]["mean"]) == 5
    assert (meta["schedule"], meta["step"], meta["round"], meta["weights"]) == ("stage1", 2, 1, "inference")
    assert [v["name"] for v in meta["variables"]] == source["model"]["variables"]
    assert meta["variables"][2] == {"name": "t2m", "units": "K", "long_name": "2m_temperature", "level": None}
    assert meta["grid"]["shape"] == [16, 32] and len(meta["grid"]["lat"]) == 16 and meta["grid"]["lon"][0] == 0.0
    src = meta["source"]
    assert (src["engine"], src["zero_stage"], src["world_size"], src["deepspeed"]) == ("local", 0, 1, None)
    assert src["files"]["engine.pt"] == hashlib.sha256((local_ckpt / "engine.pt").read_bytes()).hexdigest()
    assert src["files"]["meta.json"] == (local_ckpt / "COMPLETE").read_text()
    assert meta["written_by"]["torch"] == torch.__version__ and meta["written_by"]["deepspeed"]
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert meta["output"] == {"model.safetensors": digest}


def test_the_file_loads_with_safetensors_alone_and_carries_the_metadata(local_ckpt, tmp_path):
    """Without torch: safetensors' numpy loader reads every tensor, and the header holds met2net.json."""
    out = consolidate(local_ckpt, tmp_path / "out")
    script = (
        "import sys, json; sys.modules['torch'] = None\n"  # any import of torch fails
        "from safetensors import safe_open\n"
        "from safetensors.numpy import load_file\n"
        f"arrays = load_file({str(out / 'model.safetensors')!r})\n"
        f"with safe_open({str(out / 'model.safetensors')!r}, framework='np') as f: meta = f.metadata()\n"
        "print(json.dumps({'n': len(arrays), 'shape': list(arrays['translator_q.conv_in.weight'].shape),"
        " 'dtype': str(arrays['translator_q.conv_in.weight'].dtype), 'meta': json.loads(meta['met2net'])}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    meta = json.loads((out / "met2net.json").read_text())
    assert seen["n"] == len(meta["tensors"]) and seen["shape"] == [16, 8, 1, 1] and seen["dtype"] == "float32"
    assert seen["meta"] == {k: v for k, v in meta.items() if k != "output"}
    assert is_consolidated(out) and is_consolidated(out / "model.safetensors")
    alone = tmp_path / "shipped.safetensors"  # without met2net.json: the header's copy is the metadata
    shutil.copy(out / "model.safetensors", alone)
    state, from_header = load_consolidated(alone)
    assert from_header["config"] == meta["config"] and len(state) == len(meta["tensors"])


def test_verify_finds_altered_weights_and_metadata(local_ckpt, tmp_path, capsys):
    out = consolidate(local_ckpt, tmp_path / "out")
    assert main(["consolidate", "--verify", str(out)]) == 0
    assert "intact (inference weights" in capsys.readouterr().out
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert verify_consolidated(out) == ["model.safetensors was altered or truncated (sha256 differs from met2net.json)"]
    with pytest.raises(ConsolidateError, match="model.safetensors: altered or truncated"):
        load_consolidated(out)
    meta = json.loads((out / "met2net.json").read_text())
    meta["parameters"] += 1
    meta["tensors"]["translator_q.conv_in.bias"] = [17]
    (out / "met2net.json").write_text(json.dumps(meta))
    problems = verify_consolidated(out)
    assert any("header differs" in p for p in problems) and any("translator_q.conv_in.bias" in p for p in problems)
    assert any("parameter count" in p for p in problems)
    assert main(["consolidate", "--verify", str(out)]) == 1
    assert "altered or truncated" in capsys.readouterr().out


def test_damaged_inputs_are_refused_by_name_and_out_is_left_alone(local_ckpt, tmp_path, capsys):
    out = consolidate(local_ckpt, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def copy(name: str) -> Path:
        return Path(shutil.copytree(local_ckpt, tmp_path / name / "step_2"))

    truncated = copy("truncated")
    (truncated / "engine.pt").write_bytes((truncated / "engine.pt").read_bytes()[:1000])
    with pytest.raises(ConsolidateError, match=r"step_2: damaged checkpoint: engine.pt was altered or truncated"):
        consolidate(truncated, out)
    incomplete = copy("incomplete")
    (incomplete / "COMPLETE").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete \(no COMPLETE marker\)"):
        consolidate(incomplete, out)
    corrupt = copy("corrupt")  # garbage with valid checksums: found when read
    (corrupt / "engine.pt").write_bytes(b"not a torch file" * 100)
    resign(corrupt)
    with pytest.raises(ConsolidateError, match=r"engine.pt: not a readable torch checkpoint file .*engine file"):
        consolidate(corrupt, out)
    other = copy("other_model")  # meta.json describes another model than the files hold
    meta = json.loads((other / "meta.json").read_text())
    meta["config"]["model"]["hid_t"] = 32
    (other / "meta.json").write_text(json.dumps(meta))
    resign(other)
    with pytest.raises(
        ConsolidateError, match=r"another model than meta.json's config: model.hid_t: meta.json 32, files 16"
    ):
        consolidate(other, out)
    assert main(["consolidate", str(corrupt), "-o", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".*"))  # no partial directory left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(ConsolidateError, match="exists and is not a consolidated directory"):
        consolidate(local_ckpt, tmp_path / "mine")
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"
    with pytest.raises(ConsolidateError, match="end_to_end|weights 'some'"):
        consolidate(local_ckpt, tmp_path / "x", weights="some")


def test_replacing_a_consolidated_directory_is_atomic(local_ckpt, tmp_path):
    out = consolidate(local_ckpt, tmp_path / "out", "inference")
    consolidate(local_ckpt, out, "all")  # replaces it whole
    assert json.loads((out / "met2net.json").read_text())["weights"] == "all" and verify_consolidated(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_consolidation_restates_the_model_names_faithfully_and_sees_damage(local_ckpt, tmp_path, small_cfg):
    """Consolidation runs without torch, so it restates the model's part names; they must not drift. It checks a
    checkpoint with the torch-free protocol of training/layout.py, which finds every kind of damage."""
    from met2net.consolidate import format, source
    from met2net.model import met2net

    assert (format.TRAINED, format.COPIES) == (met2net.TRAINED, met2net.COPIES)
    model = Met2Net(small_cfg.model)
    assert {n for n, _ in model.named_buffers()} == {n for n in model.state_dict() if format.is_buffer(n)}
    damaged = {}
    for name, damage in {
        "intact": lambda c: None,
        "truncated": lambda c: (c / "engine.pt").write_bytes(b"x"),
        "missing": lambda c: (c / "rng_rank0.pt").unlink(),
        "meta": lambda c: (c / "meta.json").write_text((c / "meta.json").read_text().replace('"step": 2', '"step": 3')),
        "marker": lambda c: (c / "COMPLETE").unlink(),
    }.items():
        damaged[name] = Path(shutil.copytree(local_ckpt, tmp_path / name / "step_2"))
        damage(damaged[name])
    assert source.verify(damaged["intact"]) == [] and all(source.verify(c) for n, c in damaged.items() if n != "intact")
    for where in (local_ckpt, local_ckpt.parent, local_ckpt.parents[2]):
        assert source.locate(where, "stage1") == checkpoint.resolve(where, "stage1")


# -- training.init_from ----------------------------------------------------------------------------------------------
def test_init_from_a_consolidated_file_without_unpickling(local_ckpt, tmp_path, monkeypatch):
    inference = consolidate(local_ckpt, tmp_path / "inference")
    everything = consolidate(local_ckpt, tmp_path / "all", "all")
    gathered = torch.load(local_ckpt / "model.pt", weights_only=True)
    cfg = tiny(tmp_path / "unused", "training.schedule=stage2")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with_copies = Met2Net(cfg.model)
    meta = checkpoint.init_from(with_copies, inference, "stage1", cfg.model.__dict__)
    assert meta["weights"] == "inference"
    state = with_copies.state_dict()
    assert torch.equal(state["translator_q.conv_in.weight"], gathered["translator_q.conv_in.weight"])
    # an inference file's copies start equal to the trained ones; the checkpoint's differ (stage one moved E_k)
    assert torch.equal(state["encoders_k.0.layers.0.conv.weight"], gathered["encoders_q.0.layers.0.conv.weight"])
    assert torch.equal(
        state["translator_k.blocks.0.tau.norm1.running_mean"], state["translator_q.blocks.0.tau.norm1.running_mean"]
    )
    checkpoint.init_from(with_copies, everything / "model.safetensors", "stage1", cfg.model.__dict__)
    assert [k for k, v in with_copies.state_dict().items() if not torch.equal(v, gathered[k])] == []
    without = Met2Net(cfg.model, with_copies=False)  # end_to_end: the copies are left out
    checkpoint.init_from(without, everything, None, cfg.model.__dict__)
    other = tiny(tmp_path / "unused", "model.hid_t=32")
    with pytest.raises(ValueError, match=r"model.hid_t: checkpoint 16 vs config 32"):
        checkpoint.init_from(Met2Net(other.model), inference, None, other.model.__dict__)


def test_a_reference_file_given_to_init_from_says_what_to_run(tmp_path, small_cfg):
    ckpt = tmp_path / "epoch=49.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"met2net import-reference .*epoch=49.ckpt -o OUT"):
        checkpoint.init_from(Met2Net(small_cfg.model), ckpt, None, small_cfg.model.__dict__)


# -- the authors' reference checkpoints --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(ROOT / "tests/assets/reference_small.pt", weights_only=True)["small_ns2"]


def reference_files(golden: dict, where: Path) -> dict[str, Path]:
    """The golden reference state dict (MODEL.md §5 keys, dead branch included) as the files users have: a plain
    ``.pth``; a Lightning ``.ckpt`` (``state_dict``, ``model.`` prefix, scalar buffers saved as (1,)); and one whose
    hyper-parameters need arbitrary unpickling."""
    where.mkdir(parents=True, exist_ok=True)
    ref = {k: v.clone() for k, v in golden["reference_state_dict"].items()}
    plain = where / "met2net.pth"
    torch.save(ref, plain)
    wrapped = {f"model.{k}": (v.reshape(1) if v.ndim == 0 else v) for k, v in ref.items()}
    lightning = where / "epoch=49.ckpt"
    torch.save(
        {"state_dict": wrapped, "epoch": 49, "global_step": 1234, "pytorch-lightning_version": "2.1.0"}, lightning
    )
    pickled = where / "hparams.ckpt"
    torch.save({"state_dict": wrapped, "hyper_parameters": argparse.Namespace(lr=1e-3)}, pickled)
    return {"plain": plain, "lightning": lightning, "pickled": pickled}


def golden_config(golden: dict, *extra: str):
    m = golden["model_cfg"]
    return load_config(None, ["model.variables=[u10,t2m,r]", f"model.grid=[{m['grid'][0]},{m['grid'][1]}]", *extra])


@pytest.mark.parametrize("kind", ["plain", "lightning"])
def test_imported_reference_predicts_what_the_weights_loaded_directly_predict(golden, tmp_path, kind):
    files = reference_files(golden, tmp_path / "ref")
    cfg = golden_config(golden)
    report = import_reference(files[kind], tmp_path / "out", cfg, explicit=set())
    assert report.mapped == 300 - 8 and len(report.dropped) == 8 and report.missing == []
    assert all("spatial_gating_unit.fc" in k for k in report.dropped)
    assert report.inferred == {
        "variables": 3,
        "num_spatial_layers": 2,
        "hid_s": 4,
        "hid_t": 16,
        "num_translator_blocks": 2,
        "in_frames": 2,
        "out_frames": 2,
    }
    state, meta = load_consolidated(tmp_path / "out")
    assert meta["weights"] == "all" and meta["schedule"] == "reference" and verify_consolidated(tmp_path / "out") == []
    assert meta["step"] == (1234 if kind == "lightning" else 0) and meta["source"]["prefixed"] == (kind == "lightning")
    imported = Met2Net(model_config(meta["config"]), with_copies=True)
    imported.load_state_dict(state)
    direct = Met2Net(model_config(meta["config"]), with_copies=True)
    load_reference_weights(direct, str(files["plain"]))
    x = golden["x"]
    assert torch.equal(imported.predict(x), direct.predict(x))
    torch.testing.assert_close(imported.predict(x), golden["sample"], atol=1e-6, rtol=1e-5)  # the reference's own


def test_import_refuses_pickles_unless_trusted_and_names_disagreeing_config(golden, tmp_path, capsys):
    files = reference_files(golden, tmp_path / "ref")
    cfg = golden_config(golden)
    with pytest.raises(ConsolidateError, match=r"argparse.Namespace.*--trust-pickle"):
        import_reference(files["pickled"], tmp_path / "out", cfg, set())
    assert not (tmp_path / "out").exists()
    import_reference(files["pickled"], tmp_path / "out", cfg, set(), trust_pickle=True)
    assert verify_consolidated(tmp_path / "out") == []
    wrong = golden_config(golden, "model.hid_t=32", "model.num_translator_blocks=8")
    with pytest.raises(ConsolidateError, match=r"model.hid_t: config 32, weights 16 \(translator_q.conv_in.weight"):
        import_reference(files["plain"], tmp_path / "o2", wrong, {"model.hid_t", "model.num_translator_blocks"})
    with pytest.raises(ConsolidateError, match=r"the weights have 3 variables"):
        import_reference(files["plain"], tmp_path / "o3")  # the defaults name 5
    names = ["model.variables=[u10,t2m,r]", "model.grid=[8,16]"]
    code = main(
        ["import-reference", str(files["lightning"]), "-o", str(tmp_path / "o4"), "--weights", "inference", *names]
    )
    assert code == 0 and "dropped 8 of the dead squeeze-excitation branch" in capsys.readouterr().out
    assert json.loads((tmp_path / "o4/met2net.json").read_text())["weights"] == "inference"
    assert main(["import-reference", str(files["plain"]), "-o", str(tmp_path / "o5"), "model.hid_t=32"]) == 2
    assert "model.hid_t: config 32, weights 16" in capsys.readouterr().err


def test_imported_reference_fine_tunes_with_init_from(golden, tmp_path):
    from met2net.train import run_train

    files = reference_files(golden, tmp_path / "ref")
    model = [f"model.{k}={v}" for k, v in golden["model_cfg"].items() if k not in ("variables", "grid")]
    model += ["model.variables=[u10,t2m,r]", "model.grid=[8,16]"]
    import_reference(files["lightning"], tmp_path / "imported", load_config(None, model), set())
    state, _ = load_consolidated(tmp_path / "imported")
    cfg = tiny(tmp_path / "run", "training.schedule=stage1", f"training.init_from={tmp_path / 'imported'}", *model)
    assert run_train(cfg).exit_code == 0
    after = torch.load(tmp_path / "run/checkpoints/stage1/step_2/model.pt", weights_only=True)
    frozen = [k for k in state if k.startswith("translator_k") and state[k].is_floating_point() and "running" not in k]
    # T_k starts as the authors' T_q, the Translator that forecasts, and stays frozen through stage one
    assert frozen and [k for k in frozen if not torch.equal(after[k], state[k.replace("_k.", "_q.", 1)])] == []
    assert not torch.equal(after["encoders_q.0.layers.0.conv.weight"], state["encoders_q.0.layers.0.conv.weight"])


# -- reading torch's files without torch ---------------------------------------------------------------------------
def test_torch_files_are_read_without_torch_and_nothing_else_is_unpickled(tmp_path):
    from met2net.compat import torch_files
    from met2net.consolidate.write import SafetensorsWriter

    saved = {
        "fp32": torch.randn(3, 4),
        "view": torch.arange(10)[2:7],
        "transposed": torch.randn(4, 3).t(),
        "bf16": torch.randn(5).bfloat16(),  # a frozen parameter trained in bf16 comes out in fp32
        "fp16": torch.randn(3).half(),
        "scalar": torch.tensor(7),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "shape": torch.Size([1, 2]),
    }
    torch.save(saved, tmp_path / "t.pt")
    read = torch_files.load(tmp_path / "t.pt")
    assert read["shape"] == (1, 2)
    for k in ("fp32", "view", "transposed", "scalar", "param"):
        assert (read[k] == saved[k].detach().numpy()).all() and read[k].shape == tuple(saved[k].shape), k
    layout = {k: (tuple(saved[k].shape), np.dtype("<f4")) for k in ("bf16", "fp16")}
    writer = SafetensorsWriter(tmp_path / "w.safetensors", layout, {})
    for k in layout:
        writer.write(k, 0, read[k])
    writer.close()
    from safetensors.torch import load_file

    out = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(out[k], saved[k].float()) and out[k].dtype == torch.float32 for k in layout)
    torch.save({"w": torch.ones(1), "hparams": argparse.Namespace(lr=1)}, tmp_path / "pickled.pt")
    with pytest.raises(torch_files.FileFormatError, match=r"pickled.pt: holds objects .*argparse.Namespace"):
        torch_files.load(tmp_path / "pickled.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\0" * 100)
    with pytest.raises(torch_files.FileFormatError, match="garbage.pt: not a readable torch checkpoint"):
        torch_files.load(tmp_path / "garbage.pt")
    script = "import sys; sys.modules['torch'] = None; import met2net.cli, met2net.consolidate.from_checkpoint"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr  # consolidation imports no torch (nor DeepSpeed)
