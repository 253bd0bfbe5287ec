"""Process-wide settings every kshot command applies before any tensor is allocated.

**Keep freed memory in the process** (:func:`keep_freed_memory`). glibc's malloc serves blocks over
a dynamic threshold (128 KiB at first) with ``mmap`` and gives them back to the kernel when they are
freed, and trims the heap top over 128 KiB. A fine-tuning step allocates and frees the same feature
maps and gradients (hundreds of KiB each for LeNet) every step, so each step paid page faults and
zeroing in the kernel: a large share of a search job's wall time. Reusing the blocks changes no
result bit (``benchmarks/bench_malloc.py`` measures both, ``benchmarks/README.md`` logs it). We raise the
mmap threshold to glibc's maximum (32 MiB on 64-bit) and stop trimming, so freed blocks are reused.
The cost is that a process keeps its peak heap until it exits, which our short jobs do anyway.
Elsewhere than glibc (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


def numerics(device: torch.device, threads: int) -> dict[str, object]:
    """What decides the float rounding of a computation, recorded beside its result.

    On CPU, PyTorch (oneDNN, MKL, its own vectorised kernels) picks kernels by the processor's
    instruction set and splits reductions by the number of threads, so the same code and params give
    bit-identical results only with the same kernels and thread count. Another CPU type trains a
    slightly different network, and every number after it moves within the noise of the study.
    """
    import torch

    record: dict[str, object] = {"torch": str(torch.__version__), "device": device.type, "threads": threads}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        record["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        record["cpu"] = _cpu_model()
    return record


def cpu_description() -> str:
    """The CPU, for benchmark records: model (family, model id) and the kernels' instruction set."""
    import torch

    return f"{_cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"


def _cpu_model() -> str:
    """``model name (family F, model M)`` from ``/proc/cpuinfo``; the machine's architecture where
    that is not readable (not Linux)."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if name is None:
        return platform.machine()
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return f"{name} ({', '.join(ids)})" if ids else name
