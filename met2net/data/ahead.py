"""An iterator run on a background thread, a bounded number of items ahead of its consumer.

A conversion reads its sources here while the caller writes shards: netCDF-C, HDF5 and zlib let go of the GIL while
they read, decompress and write, so a read of the next block overlaps the writing of the last one, and the per-shard
work of each side (xarray's selections on one, h5py's file and dataset creation on the other) overlaps the other's
I/O instead of following it (docs/performance.md, "Conversion"). At most ``depth`` items wait between the two, plus
the one each side holds, so memory stays at a few items whatever the length of the sequence.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Failed:
    """The iterator's error, carried across the queue to be raised where the consumer asks for the next item."""

    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


class Ahead(Generic[T]):
    """Iterates ``items`` on a thread of its own, at most ``depth`` items ahead; yields them in order and raises
    their iterator's error where that item would have come. Use as a context manager: leaving it (after an error of
    the consumer's too) stops the thread and waits for it, so nothing is still reading once the sources close.
    ``threaded=False``: the same, iterated on the consumer's thread (where the two sides must not run at once)."""

    def __init__(self, items: Iterable[T], depth: int = 1, name: str = "met2net-read-ahead", threaded: bool = True):
        self._items = iter(items)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True) if threaded else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                self._queue.put(item)
                if self._stop.is_set():
                    return
            self._queue.put(_DONE)
        except BaseException as error:  # raised in the consumer's thread, at the item it belongs to
            self._queue.put(_Failed(error))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # a generator's cleanup runs on the thread that ran it

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._thread is None:
            return next(self._items)
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # every later call ends too
            raise StopIteration
        if isinstance(item, _Failed):
            self._queue.put(item)  # and so does every later call
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread (it finishes the item in hand) and wait for it."""
        if self._thread is None:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
            return
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)  # unblocks its put
        self._thread.join()

    def __enter__(self) -> Ahead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
