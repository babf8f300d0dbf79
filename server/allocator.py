"""The worker's use of glibc's allocator: fixed thresholds at start-up, and what a batch freed handed back.

A batch at 10,000 devices allocates and frees tens of MB (fetched records, encoded states, the
record batches and the produce requests made of them). glibc keeps freed memory among live
allocations unless told otherwise, and by default it moves its mmap threshold up to the size of
the largest block freed (up to 32 MB): after that, the record batches and fetch responses come
from the heap, where a few live allocations pin what surrounds them. Which happened depended on
timing: `ferry bench server --devices 10000 --per-device 30`, settled resident set per device,
13.3 to 27.0 KB over four runs of the same code; with the thresholds fixed, 14.0, 14.7 and 15.1 KB
in three runs (10,132-10,269 readings/s either way). Both before the benchmark stopped calling every
device offline at the end of a run, which may explain part of that spread too (docs/server.md). Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt's parameter numbers (glibc malloc.h)."""
MMAP_THRESHOLD_BYTES = 64 * 1024
"""Blocks from this size up get their own mapping, returned to the system when freed."""
TRIM_THRESHOLD_BYTES = 128 * 1024
"""Free memory at the top of the heap beyond this is returned at once."""


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def fix_thresholds() -> bool:
    """Set glibc's mmap and trim thresholds (no longer adjusted as blocks are freed); call once at
    start-up. False when the C library is not glibc (or refused)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(_LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def release_free_memory() -> None:
    """Give what a batch freed back to the system (glibc's `malloc_trim(0)`, ~1 ms with a 150 MB heap
    here): `ferry bench server`, 10,000 devices x 30 readings, 306 -> 280 MiB when it came."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
