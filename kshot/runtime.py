"""Process-wide settings every kshot command applies before any tensor is allocated.

**Keep freed memory in the process** (:func:`keep_freed_memory`). glibc's malloc serves blocks over
a dynamic threshold (128 KiB at first) with ``mmap`` and gives them back to the kernel when they are
freed, and trims the heap top over 128 KiB. A fine-tuning step allocates and frees the same feature
maps and gradients (hundreds of KiB each for LeNet) every step, so each step paid page faults and
zeroing in the kernel: a large share of a search job's wall time. Reusing the blocks changes no
result bit (``benchmarks/bench_malloc.py`` measures both; the README quotes it). We raise the
mmap threshold to glibc's maximum (32 MiB on 64-bit) and stop trimming, so freed blocks are reused.
The cost is that a process keeps its peak heap until it exits, which our short jobs do anyway.
Elsewhere than glibc (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc's malloc to reuse freed blocks instead of returning them to the kernel.

    Returns whether the settings were applied (``False`` off glibc or if glibc refused them).
    Setting ``KSHOT_MALLOC=system`` in the environment leaves malloc's defaults alone.
    """
    if os.environ.get("KSHOT_MALLOC") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
