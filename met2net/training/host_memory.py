"""Keep the host memory a training step frees for the next step, instead of giving it back to the kernel.

glibc's malloc unmaps large freed blocks and trims the heap's free top (above 128 KiB by default, a threshold that
grows only to the largest block freed), so the next step's allocations of the same sizes fault their pages in and
the kernel zeroes them again: ~160,000 minor faults per CPU step at mv5 5.625°, 0.3-0.4 s of system time in a
2.2 s step, and the kernels that first write the fresh pages run slower (docs/performance.md, session 11).
Raising the thresholds keeps the pages mapped: a step reuses the last one's, and the resident
set stays at the step's peak, which the step reaches anyway. Allocations above 32 MiB (glibc's largest mmap
threshold) are still unmapped on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8  # glibc's malloc.h
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 64 << 20}


def keep_freed_memory(one_arena: bool = False) -> bool:
    """Tell glibc's malloc to keep freed memory mapped; False where the C library is not glibc (nothing changed).

    ``one_arena``: every thread allocates from the main heap too (call it before other threads allocate). glibc gives
    each thread a heap of its own, and a block goes back to the heap it came from: when one thread allocates what
    another frees (a conversion's reader and writer, met2net/data/ahead.py), the two heaps keep their own free blocks
    and the resident set grows by a few blocks (5 MB for the 10-year bench's shards of 24 MB, docs/performance.md)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt may read these numbers otherwise
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {**SETTINGS, **({M_ARENA_MAX: 1} if one_arena else {})}
    return all(mallopt(param, value) == 1 for param, value in settings.items())
