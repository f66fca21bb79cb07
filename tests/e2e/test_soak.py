"""tools/soak.py as CI runs it: a few seeded kill -9 trials (the seed fixed, so a failure reproduces with the printed
command), each checked by the tool itself — resumed from the newest complete checkpoint, final tensors equal to an
uninterrupted run's with torch.equal, converted files equal byte for byte — and the tool's own check shown to fail
when a final tensor differs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def soak(work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools/soak.py"), "--work", str(work), "--keep", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


def trial_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stdout.splitlines() if line.startswith("trial ")]


def load_tool():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "tools/soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_seeded_kills_of_one_process_and_of_data_convert_resume_and_end_equal(tmp_path):
    """Seed 21 draws: a training run killed inside the write of its second checkpoint (resumed from the first, never
    the partial one), a conversion killed during data stats and one at a random moment."""
    out = soak(tmp_path, "--trials", "3", "--seed", "21", "--kinds", "single,convert", "--one-stage")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.startswith("soak: seed 21, 3 trial(s)") and "soak: 3/3 trials passed" in out.stdout
    lines = trial_lines(out)
    assert len(lines) == 3 and all(" equal" in line and "FAILED" not in line for line in lines), out.stdout
    assert "inside stage1's step_4 write" in lines[0] and "into data stats" in lines[1] and "convert" in lines[2]
    # the kill lands while the partial directory is there (then step_4 is the newest complete one) or, on a machine
    # slow to deliver it, just after step_6 was published: either way the re-run took the newest complete checkpoint
    landed = ".step_4.partial on disk" in lines[0]
    assert f"re-run resumed stage1 from step_{2 if landed else 4}" in lines[0]
    # the tool's comparison fails on a tensor that differs: the reference's final weights, one value changed
    tool = load_tool()
    tool.STAGES.pop("stage2")
    reference, trial = tmp_path / "reference_single", tmp_path / "trial_001_single"
    weights = trial / "checkpoints/stage1/step_6/model.pt"
    state = torch.load(weights, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 0)
    state[key].view(-1)[0] = torch.nextafter(state[key].view(-1)[0], torch.tensor(float("inf")))
    torch.save(state, weights)
    count, problems = tool.compare_final("single", trial, reference)
    assert count > 0 and problems == [f"{weights}/{key} differs from the uninterrupted run's"]


@pytest.mark.distributed
@pytest.mark.slow
def test_a_seeded_kill_of_a_two_rank_zero2_run_resumes_and_ends_equal(tmp_path):
    """Seed 16 draws: rank 1 of 2 killed inside the write of the first checkpoint; torchrun must end the job, the
    re-run start from the beginning (no complete checkpoint) or from step_2 (if the kill came after its publication)
    and end with the uninterrupted run's tensors."""
    out = soak(tmp_path, "--trials", "1", "--seed", "16", "--kinds", "zero2", "--one-stage")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = trial_lines(out)
    assert len(lines) == 1 and "kill rank inside stage1's step_2 write" in lines[0], out.stdout
    assert " tensors equal" in lines[0] and "killed rank 1" in lines[0], out.stdout
