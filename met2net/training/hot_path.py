"""What the train loop does every step without waiting for the device: batches go to it asynchronously, and the
step's losses stay on it until a log point reads them.

On a GPU, reading a CUDA tensor on the host (``float()``, ``.item()``, ``.tolist()``, ``.cpu()``) waits for every
kernel queued before it; one such read per step keeps the queue empty, and the GPU idles while Python prepares the
next step. So the loop keeps each step's detached loss terms as tensors (``StepMeter.add``) and reads them once per
``training.log_every`` steps and at the last step, with one ``.tolist()`` (``StepMeter.read``). The train records
hold the same numbers as when every step was read: the loss terms of the step they are logged at.

Throughput is measured over the steps between two log points (the read waits for the device, so the window's time is
the device's time), without the validation, checkpoint and logging work done at a step's end. Each step's own time,
which the time limit needs, is the host's time from the end of the previous step to the end of this one: on a GPU the
host runs ahead of the device by the queue's depth, so it is the device's step time once the queue is full.
"""

from __future__ import annotations

import time

import torch

from met2net.data.windows import Normalise


def to_device(x: torch.Tensor, device: torch.device, normalise: Normalise | None = None) -> torch.Tensor:
    """A batch on ``device``, contiguous, and normalised there by ``normalise`` (already on ``device``) when the
    loader delivers raw windows: two elementwise passes on the device instead of on the host. On CUDA through a
    contiguous pinned copy sent with ``non_blocking``: the host does not wait for the transfer, nor for the steps
    still queued before it.

    The loader's own ``pin_memory`` is not used: x and y are views of one (B, T_in + T_out, C, H, W) batch, pinned
    with their strides, and torch sends a strided host tensor through a pageable contiguous temporary, whose copy
    waits for the stream (a host synchronisation per batch). The copy into pinned memory here is the one the loader's
    pin thread would make; it runs while the device works through the queued steps. On the CPU the normalisation
    writes the contiguous copy (without it, ``contiguous`` does)."""
    if device.type == "cuda":
        pinned = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        pinned.copy_(x)
        x = pinned.to(device, non_blocking=True)
    else:
        x = x.to(device)
    return x.contiguous() if normalise is None else normalise(x)


class StepMeter:
    """The latest step's loss terms, on the device, and the samples and seconds of training since the last read."""

    def __init__(self) -> None:
        self.parts: dict[str, torch.Tensor] = {}
        self.samples, self.seconds = 0, 0.0
        self.tic = time.perf_counter()

    def restart(self) -> None:
        """Training resumes now: the time since the last ``lap`` (validation, checkpoint, logging) is not counted."""
        self.tic = time.perf_counter()

    def add(self, parts: dict[str, torch.Tensor], samples: int) -> None:
        """One micro-step: its detached loss terms (kept, not read) and its samples over all ranks."""
        self.parts = parts
        self.samples += samples

    def lap(self) -> float:
        """Seconds of training since the last ``lap`` or ``restart`` (one optimizer step, with its data), counted."""
        now = time.perf_counter()
        seconds, self.tic = now - self.tic, now
        self.seconds += seconds
        return seconds

    def read(self) -> dict[str, float]:
        """The latest step's loss terms as floats and the samples/s since the last read: one host read, which waits
        for the device; the wait counts as training time."""
        values = torch.stack([v.detach().float() for v in self.parts.values()]).tolist()
        self.lap()
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        self.samples, self.seconds = 0, 0.0
        return {"samples_per_s": rate, **dict(zip(self.parts, values, strict=True))}
