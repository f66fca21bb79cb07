import numpy as np
import pytest
from torch.utils.data import DataLoader

from met2net.data.sampler import ShardedSampler, epoch_order, rank_share

AWKWARD = [0, 1, 7, 13, 101]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_samples", AWKWARD)
def test_shares_are_equal_disjoint_and_drop_only_the_remainder(num_samples, world_size, shuffle):
    order = epoch_order(num_samples, seed=3, epoch=1, shuffle=shuffle)
    shares = [rank_share(order, r, world_size) for r in range(world_size)]
    from_samplers = []
    for r in range(world_size):
        s = ShardedSampler(num_samples, r, world_size, seed=3, shuffle=shuffle)
        s.set_epoch(1)
        from_samplers.append(list(s))
        assert len(s) == s.samples_per_rank == num_samples // world_size
    assert from_samplers == [share.tolist() for share in shares]
    assert all(len(share) == num_samples // world_size for share in shares)
    union = np.concatenate(shares)
    assert len(set(union.tolist())) == len(union) == num_samples - num_samples % world_size
    assert set(union.tolist()) <= set(range(num_samples))


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(101, seed=7, epoch=2, shuffle=True)
    assert sorted(a.tolist()) == list(range(101))
    np.testing.assert_array_equal(a, epoch_order(101, seed=7, epoch=2, shuffle=True))
    assert not np.array_equal(a, epoch_order(101, seed=7, epoch=3, shuffle=True))
    assert not np.array_equal(a, epoch_order(101, seed=8, epoch=2, shuffle=True))
    np.testing.assert_array_equal(epoch_order(5, seed=7, epoch=2, shuffle=False), np.arange(5))


def test_dropped_remainder_changes_with_the_epoch():
    dropped = []
    for epoch in range(4):
        kept = np.concatenate([rank_share(epoch_order(13, 0, epoch, True), r, 5) for r in range(5)])
        dropped.append(frozenset(set(range(13)) - set(kept.tolist())))
    assert len(set(dropped)) > 1


def test_set_epoch_keeps_a_restored_position_only_within_the_same_epoch():
    s = ShardedSampler(20, rank=1, world_size=2, seed=0)
    s.set_epoch(3)
    s.advance(4)
    s.set_epoch(3)
    assert s.position == 4 and len(s) == 6 and list(s) == s.indices()[4:].tolist()
    s.set_epoch(4)
    assert s.position == 0 and len(s) == 10


def test_iteration_is_a_snapshot_so_prefetching_is_unaffected_by_advance():
    s = ShardedSampler(20, rank=0, world_size=2, seed=0)
    it = iter(s)
    s.advance(5)
    assert list(it) == s.indices().tolist()


def test_advance_past_the_share_is_refused():
    s = ShardedSampler(7, rank=0, world_size=2)
    s.advance(3)
    with pytest.raises(ValueError, match=r"advance\(1\).*\[0, 3\]"):
        s.advance(1)


@pytest.mark.parametrize("key, value", [("world_size", 4), ("num_samples", 21)])
def test_load_state_refuses_a_different_world_or_dataset(key, value):
    state = ShardedSampler(20, rank=0, world_size=2).state_dict() | {key: value}
    with pytest.raises(ValueError, match=rf"{key} {value}, this run has {2 if key == 'world_size' else 20}"):
        ShardedSampler(20, rank=0, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("bad", [dict(rank=2, world_size=2), dict(rank=-1, world_size=2), dict(rank=0, world_size=0)])
def test_bad_ranks_are_refused(bad):
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ShardedSampler(10, **bad)


def train(loader: DataLoader, sampler: ShardedSampler, epochs: range, stop_after: int | None = None) -> list:
    """The training loop's side of the protocol: set_epoch, then advance by every batch actually taken."""
    taken = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for batch in loader:
            sampler.advance(len(batch))
            taken.append(batch.tolist())
            if len(taken) == stop_after:
                return taken
    return taken


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("k", [1, 3, 4, 6])  # 4: saved at the very end of epoch 0
def test_resume_mid_epoch_gives_the_uninterrupted_batches(rank, k):
    dataset, batch_size, epochs = list(range(23)), 3, range(2)  # 11 per rank: batches 3, 3, 3, 2 per epoch

    def build(state=None):
        sampler = ShardedSampler(len(dataset), rank, 2, seed=5)
        if state is not None:
            sampler.load_state_dict(state)
        return sampler, DataLoader(dataset, batch_size=batch_size, sampler=sampler)

    sampler, loader = build()
    reference = train(loader, sampler, epochs)
    sampler, loader = build()
    head = train(loader, sampler, epochs, stop_after=k)
    state = sampler.state_dict()
    sampler, loader = build(state)
    tail = train(loader, sampler, range(state["epoch"], epochs.stop))
    assert head + tail == reference
    assert len(reference) == 8


def test_ranks_never_overlap_within_an_epoch():
    seen = []
    for rank in range(2):
        sampler = ShardedSampler(23, rank, 2, seed=5)
        batches = train(DataLoader(range(23), batch_size=3, sampler=sampler), sampler, range(1))
        seen.append({i for batch in batches for i in batch})
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 11
