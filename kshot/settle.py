"""Make Snakemake agree with DVC after ``dvc pull``, ``dvc checkout`` or ``git checkout`` + ``dvc
checkout``.

Snakemake decides what to rerun from file times and from its own records (``.snakemake/``) of the
params and code each output was made with. DVC restores outputs with new times, in any order, and
never restores those records: after a ``dvc pull`` Snakemake planned nearly every job again, and
after checking out an older commit it compared the restored outputs with the records of the newer
run. DVC, though, knows more: ``dvc status`` is clean exactly when every stage's outputs are the
ones ``dvc.lock`` records for the current params, code and inputs. So while the Snakefile is read:

1. :func:`foreign` lists the pipeline's outputs whose times are not those the last Snakemake run
   left (:func:`write_stamp`, called when a run succeeds, keeps them in ``.snakemake/kshot-stamp.json``).
   Outputs Snakemake wrote itself are not foreign, and this costs one ``stat`` per output.
2. If there are some and ``dvc status`` is clean, :func:`settle` runs ``snakemake --touch`` on the
   default targets: Snakemake marks them up to date in DAG order and records the current params.

If ``dvc status`` is not clean (a file changed by hand, a params edit not yet run, code under
development), nothing is touched and Snakemake decides as usual. The DVC stages' own Snakemake calls
skip this (``KSHOT_SETTLE=0``): DVC holds its lock while they run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from kshot.io import write_json

STAMP = Path(".snakemake") / "kshot-stamp.json"
DISABLE = "KSHOT_SETTLE"  # set to 0 to skip (the DVC stages, the nested --touch run)


def _mtimes(paths: Iterable[str], root: Path) -> dict[str, int]:
    out = {}
    for path in paths:
        try:
            out[path] = (root / path).stat().st_mtime_ns
        except OSError:
            continue
    return out


def write_stamp(paths: Iterable[str], root: Path = Path()) -> None:
    """Record the times of the existing ``paths`` as the last Snakemake run left them."""
    write_json(root / STAMP, _mtimes(paths, root))


def foreign(paths: Iterable[str], root: Path = Path()) -> list[str]:
    """The existing ``paths`` whose times differ from the stamp (all of them without one)."""
    try:
        known = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        known = {}
    return sorted(p for p, t in _mtimes(paths, root).items() if known.get(p) != t)


def dvc_clean(root: Path = Path()) -> bool:
    """Whether ``dvc status`` finds every stage of ``dvc.yaml`` up to date (False where DVC is not
    set up or fails)."""
    if not (root / ".dvc").is_dir() or not (root / "dvc.lock").is_file():
        return False
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--quiet"],  # exit 0: up to date, 1: not
            cwd=root,
            capture_output=True,
            timeout=600,
        )
        return proc.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def settle(snakefile: str, root: Path = Path()) -> bool:
    """``snakemake --touch`` on the default targets, in a separate process; returns whether it
    succeeded (a failure, e.g. another Snakemake holding the lock, leaves the decision to Snakemake)."""
    env = {**os.environ, DISABLE: "0"}
    cmd = [sys.executable, "-m", "snakemake", "-s", snakefile, "--touch", "--cores", "1", "--quiet", "all"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode == 0


def agree_with_dvc(paths: list[str], snakefile: str, root: Path = Path()) -> str | None:
    """Steps 1 and 2 of the module's docstring; returns what was done, for the log (None: nothing)."""
    if os.environ.get(DISABLE) == "0":
        return None
    restored = foreign(paths, root)
    if not restored or not dvc_clean(root):
        return None
    if not settle(snakefile, root):
        return (
            f"kshot: {len(restored)} outputs restored by DVC; `snakemake --touch` failed, Snakemake decides"
        )
    return f"kshot: {len(restored)} outputs restored by DVC match dvc.lock; marked up to date"
