"""Samples: windows of in_frames → out_frames consecutive frames that never cross a gap.

Shapes: a series is (N, C, H, W); a sample is x (T_in, C, H, W), y (T_out, C, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def window_starts(times: np.ndarray, length: int, stride: int, step: np.timedelta64) -> np.ndarray:
    """Start indices of windows of ``length`` frames spaced exactly ``step`` apart, every
    ``stride`` frames within each unbroken segment of ``times``."""
    if len(times) < length:
        return np.zeros(0, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(times) != step) + 1
    starts = []
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(times)]):
        starts.append(np.arange(lo, hi - length + 1, stride, dtype=np.int64))
    return np.concatenate(starts)


class WindowDataset(Dataset):
    """Windows over an in-memory, already normalised series."""

    def __init__(self, series: np.ndarray, starts: np.ndarray, in_frames: int, out_frames: int):
        self.series = torch.from_numpy(np.ascontiguousarray(series, dtype=np.float32))
        self.starts = starts
        self.in_frames, self.out_frames = in_frames, out_frames

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        window = self.series[s : s + self.in_frames + self.out_frames]
        return window[: self.in_frames], window[self.in_frames :]
