"""Per-rank epoch sharding: every rank gets an equal, disjoint share of a seeded epoch order.

Equal shares mean equal step counts, so no rank waits in a collective for another that has one more batch.
The few samples that do not divide evenly (fewer than ``world_size``) are dropped for that epoch rather than
duplicated: a duplicate would weigh some windows twice in the gradient. Because the order is reshuffled every
epoch, a different remainder is dropped each time, so no window is left out for good.

Resume protocol
---------------
A DataLoader prefetches (``num_workers * prefetch_factor`` batches ahead), so the sampler cannot know what the
training loop has actually used. The loop tells it: after taking each batch from the loader it calls
``sampler.advance(len(batch))``; ``state_dict()`` then records the epoch and that position. On resume,
``load_state_dict`` restores them and the next ``iter(sampler)`` starts after the consumed samples, so batches
that were prefetched but never used are read again, none twice. The state holds no rank: every rank consumes
the same number of samples, so one saved state serves all ranks.

At another world size, ``remap_state`` turns a saved state into one for the new number of ranks. Because the shares
interleave, the samples that ``W`` ranks at position ``p`` have consumed together are exactly the first ``p·W`` of
the epoch's order, whatever ``W``; the new position is ``p·W / W'``, so no sample of the interrupted epoch is
repeated or skipped in total. (Which windows form the <``W`` dropped at the epoch's end depends on ``W``.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The global sample order of one epoch: the same on every rank, a fresh permutation each epoch."""
    if num_samples < 0 or seed < 0 or epoch < 0:
        raise ValueError(
            f"epoch_order: expected non-negative num_samples, seed and epoch, got {num_samples}, {seed}, {epoch}"
        )
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)


def share_size(num_samples: int, world_size: int) -> int:
    """Samples per rank and epoch; the remainder ``num_samples % world_size`` is dropped."""
    return num_samples // world_size


def rank_share(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s samples: every ``world_size``-th entry of ``order`` from position ``rank``, minus the tail.

    Interleaving (rather than contiguous blocks) makes the ranks' k-th batches together a contiguous stretch of
    the order, so an unshuffled pass sees the samples in order and drops only the last few.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank_share: expected 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return order[rank::world_size][: share_size(len(order), world_size)]


def remap_state(state: dict, world_size: int) -> dict:
    """A sampler state saved by ``state["world_size"]`` ranks, for ``world_size`` ranks: same epoch, same number
    of samples consumed by all ranks together (``position × world size``). Refused when that number does not
    divide among the new ranks (a state saved mid-optimizer-step)."""
    if world_size < 1:
        raise ValueError(f"remap_state: expected world_size >= 1, got {world_size}")
    old = int(state["world_size"])
    consumed = int(state["position"]) * old
    if consumed % world_size:
        raise ValueError(
            f"loader state: {consumed} samples of epoch {state['epoch']} were consumed by {old} rank(s); "
            f"they do not divide among {world_size} ranks, so the position cannot be mapped"
        )
    return {**state, "position": consumed // world_size, "world_size": int(world_size)}


class ShardedSampler(Sampler[int]):
    """This rank's share of each epoch, resumable mid-epoch (see the module docstring for the protocol).

    ``set_epoch(e)`` starts epoch ``e`` from its first sample, except when ``e`` is the current epoch: then the
    position restored by ``load_state_dict`` is kept, so a loop that calls ``set_epoch`` at the top of every
    epoch resumes correctly. ``len()`` is what the next ``iter()`` yields (the unconsumed rest of the share).
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int = 0, shuffle: bool = True):
        if num_samples < 0:
            raise ValueError(f"ShardedSampler: expected num_samples >= 0, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"ShardedSampler: expected 0 <= rank < world_size, got rank {rank}, world_size {world_size}"
            )
        if seed < 0:
            raise ValueError(f"ShardedSampler: expected seed >= 0, got {seed}")
        self.num_samples, self.rank, self.world_size = int(num_samples), int(rank), int(world_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.epoch, self.position = 0, 0

    @property
    def samples_per_rank(self) -> int:
        """A full epoch's share on each rank (steps per epoch = this / batch size)."""
        return share_size(self.num_samples, self.world_size)

    def indices(self) -> np.ndarray:
        """This rank's whole share of the current epoch, consumed or not."""
        return rank_share(
            epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle), self.rank, self.world_size
        )

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"set_epoch: expected epoch >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def advance(self, num_consumed: int) -> None:
        """Record that the loop has taken ``num_consumed`` more samples of this epoch from the loader."""
        if num_consumed < 0 or self.position + num_consumed > self.samples_per_rank:
            raise ValueError(
                f"advance({num_consumed}): position {self.position} would leave "
                f"[0, {self.samples_per_rank}] (this rank's share of epoch {self.epoch})"
            )
        self.position += int(num_consumed)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.position :].tolist())  # snapshot now: later advance() calls must not shift it

    def __len__(self) -> int:
        return self.samples_per_rank - self.position

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch, position and seed; refuse a state whose positions mean different samples here."""
        for key in ("world_size", "num_samples"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"loader state: saved with {key} {state[key]}, this run has {getattr(self, key)}; "
                    f"the saved position cannot be mapped onto a different {key}. Resume with the same "
                    "data and world size, or initialise from weights only."
                )
        position = int(state["position"])
        if not 0 <= position <= self.samples_per_rank:
            raise ValueError(f"loader state: position {position} outside [0, {self.samples_per_rank}]")
        self.epoch, self.position, self.seed = int(state["epoch"]), position, int(state["seed"])
