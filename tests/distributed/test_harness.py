"""The multi-rank test harness itself: a deadlocked test must fail, not hang the suite."""

from __future__ import annotations

import time

import pytest
import torch.distributed as dist

from tests.distributed.harness import run_ranks


def _rank_one_skips_the_barrier(rank: int, world_size: int) -> int:
    if rank == 0:
        dist.barrier()  # waits for rank 1 for ever: rank 1 never enters it and then waits in teardown's barrier
    else:
        time.sleep(3600)
    return rank


def test_a_deadlock_fails_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\] of 2 still running after 20 s"):
        run_ranks(_rank_one_skips_the_barrier, 2, tmp_path, timeout_s=20)
    assert time.monotonic() - t0 < 120  # the timeout ended it, not gloo's own 30-minute default


def _identity(rank: int, world_size: int) -> tuple[int, int]:
    return rank, world_size


def test_results_come_back_in_rank_order(tmp_path):
    assert run_ranks(_identity, 2, tmp_path) == [(0, 2), (1, 2)]


def _store_kind(rank: int, world_size: int) -> str:
    store = dist.distributed_c10d._get_default_store()
    while hasattr(store, "underlying_store"):  # the group's PrefixStores around the rendezvous store
        store = store.underlying_store
    return type(store).__name__


def test_ranks_meet_through_a_file_not_a_port(tmp_path):
    """A TCP port found free can be taken by another test's process before rank 0 binds it; a file cannot."""
    assert run_ranks(_store_kind, 2, tmp_path) == ["FileStore", "FileStore"]
