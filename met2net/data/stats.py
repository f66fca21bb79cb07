"""Per-channel statistics as mergeable (count, mean, M2) states.

Chan et al.'s pairwise update: one pass over any partition of the data (files, ranks,
chunks) merges to the same mean and variance as one pass over all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    count: np.ndarray  # (C,) float64
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> Moments:
        z = np.zeros(channels)
        return cls(z.copy(), z.copy(), z.copy(), np.full(channels, np.inf), np.full(channels, -np.inf))

    @classmethod
    def of(cls, data: np.ndarray, channel_axis: int = 1) -> Moments:
        """Moments of one chunk, per channel along ``channel_axis``."""
        x = np.moveaxis(np.asarray(data, dtype=np.float64), channel_axis, 0).reshape(data.shape[channel_axis], -1)
        mean = x.mean(axis=1)
        return cls(np.full(x.shape[0], float(x.shape[1])), mean, ((x - mean[:, None]) ** 2).sum(axis=1),
                   x.min(axis=1), x.max(axis=1))

    def merge(self, other: Moments) -> Moments:
        n = self.count + other.count
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / safe
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        return Moments(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1.0))
