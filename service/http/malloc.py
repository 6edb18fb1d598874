"""glibc's malloc in a serving process: large blocks always from mmap, so what a large request frees goes back to
the operating system.

glibc serves a block of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it when it is freed; smaller
blocks come from the heap, where freed memory mostly stays in the process. The threshold starts at 128 KiB, but
each time an mmapped block is freed it rises to that block's size (up to 32 MiB on 64-bit), so after one large
request the next requests' arrays of that size come from the heap and stay there. Measured with `vae serve
--workers 2` on the digits model and six /elbo requests of 4,096 instances at the calibrated L (2026-11-27): each
worker went from 109 MB to 132-144 MB and kept it, 313 MB for the whole server against the 300 MB it is meant
to stay under; with the threshold set (which also stops it moving), 120-123 MB and 280 MB. One-instance requests
at 64 connections and 256-row .npy requests at 16 ran at the same rate either way (docs/operations.md).

`vae score` does not do this: it allocates chunk-sized arrays over and over, which the heap serves without a
page fault each time.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept from rising


def operator_set_threshold() -> bool:
    """Whether the environment sets glibc's mmap threshold itself (MALLOC_MMAP_THRESHOLD_, or
    glibc.malloc.mmap_threshold in GLIBC_TUNABLES): an operator's own setting wins."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in tunables


def pin_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to MMAP_THRESHOLD_BYTES for this process. False, with nothing changed, where the
    environment sets it (operator_set_threshold), or the C library has no mallopt (macOS, Windows) or refuses it
    (musl's does nothing and returns 0). With jemalloc or tcmalloc preloaded it changes nothing that matters."""
    if operator_set_threshold():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows' CDLL takes no None
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
