"""Keep freed host memory in the process instead of handing it back to the OS after every step.

glibc serves allocations above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages and unmaps
them on free, so a CPU training step whose activations are tens of MB faults every page in again on every
step. A PointNet step (batch 32 x 256 points, full width) spends more time in the kernel than in torch
for that: 622 ms per step, 231 ms with freed memory kept (one thread; 358 -> 146 ms with two;
docs/benchmarks.md, session 17). The price is a resident size that stays at the run's peak.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_KEPT_UP_TO = 1 << 30  # allocations below this come from the heap, which is never trimmed
OPT_OUT = "NFTKIT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Switch glibc malloc to keeping freed memory for this process; ``True`` if it took effect.

    A no-op off Linux/glibc, or with ``NFTKIT_KEEP_FREED_MEMORY=0``. The ``nftkit`` command calls it; call
    it yourself before CPU runs from code (it changes the whole process's allocator)."""
    if os.environ.get(OPT_OUT, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEPT_UP_TO)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
