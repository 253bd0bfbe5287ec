"""The shared gradient's per-step averaging as one C call on CPU (``csrc/group_mean.c``).

Why: at k-shot batch sizes a fine-tuning step of a small network takes a few milliseconds, and
the PyTorch ops of :class:`kshot.shared_grad.GroupedGradient` (four per grouped parameter) cost
10-25 us each right after ``backward()`` whatever their size, which made the shared gradient
cost up to 7% of a step. The C kernel averages every grouped parameter in one call from Python.
It does exactly what the PyTorch path does, in the same order (rows added into group sums in row
order, a multiply by ``1/|group|``, rows overwritten), so results are bitwise the same: a machine
without a C compiler gets the same numbers, only slower (a test checks it).

The source is compiled on first use with ``$CC`` (default ``cc``; a command with arguments, such
as ``ccache gcc``, works), without floating-point contraction, into ``$KSHOT_CACHE_DIR`` (default
``$XDG_CACHE_HOME/kshot``, else ``~/.cache/kshot``), under a name keyed by the source and the
command, so an edited source is rebuilt. The library is written to a temporary file and renamed,
so jobs building it side by side never load a half-written one. ``KSHOT_NATIVE=0`` turns the
kernel off; where it does not build, a warning says why and the PyTorch path runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

SOURCE = Path(__file__).parent / "csrc" / "group_mean.c"
FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared")
_PTR = ctypes.c_void_p


def cache_dir() -> Path:
    """Where the compiled kernel is kept (see the module docstring)."""
    if os.environ.get("KSHOT_CACHE_DIR"):
        return Path(os.environ["KSHOT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kshot"


@functools.cache  # once per process: the environment is read on the first call
def group_mean_kernel() -> Callable[..., None] | None:
    """``kshot_group_mean(parts, g, n, d, assign, groups, inv_counts, sums)`` from the compiled
    kernel (pointer arrays, one entry per part), or ``None`` where it is turned off or unavailable."""
    if os.environ.get("KSHOT_NATIVE", "1") == "0":
        return None
    try:
        path = build()
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a cached library that does not load (e.g. truncated on disk): rebuild it
            lib = ctypes.CDLL(str(build(force=True)))
        fn = lib.kshot_group_mean
    except (OSError, RuntimeError, AttributeError, ValueError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"kshot.native: the C kernel for the shared gradient is unavailable ({err}); "
            "using PyTorch ops instead (the same results, slower; KSHOT_NATIVE=0 silences this)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    fn.argtypes = [ctypes.c_int64] + [_PTR] * 7
    fn.restype = None
    return fn


def build(force: bool = False) -> Path:
    """Compile ``SOURCE`` into the cache (unless there already) and return the library's path."""
    command = (*shlex.split(os.environ.get("CC") or "cc"), *FLAGS)
    key = hashlib.sha256(SOURCE.read_bytes() + "\0".join(command).encode()).hexdigest()[:16]
    folder = cache_dir()
    lib = folder / f"group_mean-{key}.so"
    if lib.exists() and not force:
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{lib.name}.", suffix=".tmp")
    os.close(fd)
    try:
        proc = subprocess.run([*command, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise OSError(
                f"'{' '.join(command)}' failed on {SOURCE} with exit code {proc.returncode}: "
                f"{proc.stderr.strip()[-800:]}"
            )
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib
