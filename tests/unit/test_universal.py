"""Resume at another world size, the pieces without processes: which resumes are possible, the sampler's global
position, fresh RNG seeds."""

from __future__ import annotations

import numpy as np
import pytest

from met2net.data.sampler import ShardedSampler, remap_state
from met2net.training.rng import derived_seed
from met2net.training.universal import resume_mode, written_by


def meta(engine: str, stage: int, world: int) -> dict:
    return {"engine": engine, "zero_stage": stage, "world_size": world}


@pytest.mark.parametrize(
    "saved, now, mode",
    [
        (("deepspeed", 2, 2), ("deepspeed", 2, 2), "same"),
        (("deepspeed", 2, 2), ("deepspeed", 2, 1), "universal"),
        (("deepspeed", 3, 1), ("deepspeed", 3, 4), "universal"),
        (("deepspeed", 1, 4), ("deepspeed", 1, 2), "universal"),
        (("deepspeed", 0, 2), ("deepspeed", 0, 4), "same"),  # ZeRO-0: whole optimizer state, any world size
        (("deepspeed", 3, 2), ("deepspeed", 2, 2), "universal"),  # per-parameter state fits any ZeRO 1/2/3
        (("deepspeed", 1, 4), ("deepspeed", 3, 8), "universal"),
        (("local", 0, 1), ("local", 0, 1), "same"),
    ],
)
def test_resume_modes(tmp_path, saved, now, mode):
    assert resume_mode(tmp_path, meta(*saved), now[2], now[0], now[1]) == mode


@pytest.mark.parametrize(
    "saved, now, hint",
    [
        (("local", 0, 1), ("deepspeed", 2, 2), "one process with deepspeed.zero_stage=0"),
        (("deepspeed", 2, 2), ("local", 0, 1), "deepspeed.zero_stage=1, 2 or 3"),
        (("deepspeed", 0, 2), ("local", 0, 1), "deepspeed.gradient_accumulation above 1"),
        (("deepspeed", 3, 2), ("deepspeed", 0, 2), "deepspeed.zero_stage=1, 2 or 3"),
        (("deepspeed", 0, 2), ("deepspeed", 2, 2), "deepspeed.zero_stage=0"),
    ],
)
def test_engine_changes_are_refused_with_what_to_do(tmp_path, saved, now, hint):
    with pytest.raises(ValueError) as err:
        resume_mode(tmp_path, meta(*saved), now[2], now[0], now[1])
    text = str(err.value)
    assert str(tmp_path) in text and hint in text and "training.init_from=" in text
    assert f"on {saved[2]} rank(s)" in text and f"on {now[2]} rank(s)" in text


def test_older_checkpoints_name_their_engine_by_their_files(tmp_path):
    old = {"world_size": 2, "config": {"deepspeed": {"zero_stage": 3}}}
    assert written_by(tmp_path, old) == ("deepspeed", 3)
    (tmp_path / "engine.pt").write_bytes(b"")
    assert written_by(tmp_path, {"world_size": 1}) == ("local", 0)


@pytest.mark.parametrize("old, new", [(2, 1), (1, 2), (2, 4), (4, 2), (3, 1)])
def test_remapped_position_neither_repeats_nor_skips(old, new):
    n, seed, per_step = 50, 3, 12  # a global batch of 12: divisible by 1, 2, 3, 4
    before = [ShardedSampler(n, r, old, seed=seed) for r in range(old)]
    for s in before:
        s.set_epoch(1)
        s.advance(per_step // old * 2)  # two optimizer steps
    consumed = {i for s in before for i in s.indices()[: s.position]}
    state = remap_state(before[0].state_dict(), new)
    after = [ShardedSampler(n, r, new, seed=seed) for r in range(new)]
    rest = []
    for s in after:
        s.load_state_dict(state)
        s.set_epoch(1)  # what the loop calls: keeps the restored position
        rest += list(s)
    assert consumed.isdisjoint(rest) and len(rest) == len(set(rest))
    order = np.random.default_rng([seed, 1]).permutation(n)
    usable = len(order) // new * new
    assert consumed | set(rest) == set(order[:usable].tolist())  # the whole epoch once (less < new dropped)


def test_a_position_that_does_not_divide_is_refused():
    s = ShardedSampler(20, 0, 2)
    s.advance(3)  # 6 samples on 2 ranks
    with pytest.raises(ValueError, match="6 samples of epoch 0 .* do not divide among 4 ranks"):
        remap_state(s.state_dict(), 4)


def test_derived_seeds_are_deterministic_and_distinct():
    seeds = {derived_seed(0, step, rank) for step in (3, 4) for rank in range(4)}
    assert len(seeds) == 8 and derived_seed(0, 3, 1) == derived_seed(0, 3, 1)
    assert all(0 <= s < 2**63 for s in seeds)
