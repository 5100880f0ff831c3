"""The C allocator's settings for the pipeline's large, short-lived buffers.

Each batch makes a few buffers of hundreds of kilobytes to megabytes (a chunk's joined
records, its encoded events, the segment's blob) and frees them a moment later. glibc
serves such sizes with mmap and gives them back with munmap, so every batch pays
again for the kernel to zero and map fresh pages: about a third of the replay's
system time (~150,000 page faults per 400,000 events). Serving them from the heap,
and keeping a bounded amount of freed heap, removes two thirds of those faults.

Only glibc is tuned, only once, and never against the operator's own GLIBC_TUNABLES.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD = 64 * 1024 * 1024  # freed heap kept for the next batch, at most

_done = False


def keep_buffers_in_heap() -> bool:
    """Serve allocations below 32 MiB from the heap and keep up to 64 MiB of it free.

    True when applied; False where the C library is not glibc, or the operator has
    tuned glibc's malloc (GLIBC_TUNABLES or the older MALLOC_*_ variables: theirs win),
    or it was already applied."""
    global _done
    if _done or _operator_tuned(os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt to speak of)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _done = True
    if not applied:
        log.warning("could not tune the C allocator; large buffers stay mmap-backed")
    return applied


def _operator_tuned(environ: Mapping[str, str]) -> bool:
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "") or any(
        name in environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                                     "MALLOC_MMAP_MAX_"))
