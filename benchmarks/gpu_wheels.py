"""The wheels the GPU machine lacks for ``gpu_check.py``, downloaded into ``.whl/`` (git-ignored).

The GPU machine has its own Python (3.12) with torch, numpy, pandas, scikit-learn, matplotlib and
more, and no network; what kshot's pipeline needs beyond that travels as wheels. This script takes
the requirement closure of kshot's dependencies and of its ``pipeline`` extra (Snakemake, the
notebook's nbclient, ...) in this environment, drops the distributions named in ``--have`` (the
machine's package list, one name per line or separated by commas) and DVC (not needed to run the
DAG), and downloads each remaining one at this environment's version for CPython 3.12 on
manylinux x86-64 (``pip download --no-deps``). Then, on the GPU machine::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out $OUT

Run here, inside the environment: ``python benchmarks/gpu_wheels.py --have <list file>``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
SKIP = {"dvc", "kshot"}  # DVC does not run the DAG; kshot travels as source


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    """Installed distributions reachable from ``roots`` through their requirements (extras left
    out): canonical name -> installed version."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in seen or name in SKIP:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement not installed here
        seen[name] = dist.version
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--have", type=Path, help="the GPU machine's package names (a text file)")
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    parser.add_argument("--dry-run", action="store_true", help="list the wheels, download nothing")
    args = parser.parse_args()
    have = set()
    if args.have:
        have = {canonical(n) for n in re.split(r"[,\s]+", args.have.read_text()) if n}
    roots = [r.split(";")[0] for r in metadata.distribution("kshot").requires or [] if "extra ==" not in r]
    roots += ["snakemake", "nbclient", "nbformat", "ipykernel"]
    names = [re.split(r"[\s<>=!~\[(]", r, maxsplit=1)[0] for r in roots]
    wanted = {n: v for n, v in sorted(closure(names).items()) if n not in have}
    print(f"gpu_wheels: {len(wanted)} distributions: " + ", ".join(f"{n}=={v}" for n, v in wanted.items()))
    if args.dry_run:
        return
    args.dest.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(args.dest)]
    cmd += ["--python-version", "3.12", "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    for name, version in wanted.items():
        spec = f"{name}=={version}"
        if subprocess.run([*cmd, "-q", spec], capture_output=True).returncode != 0:
            # published as source only: a pure-Python one builds into a wheel for any Python
            build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(args.dest), spec]
            subprocess.run(build, check=True)
            print(f"gpu_wheels: built {spec} from its source distribution")
    size = sum(p.stat().st_size for p in args.dest.glob("*.whl")) / 2**20
    print(f"gpu_wheels: {args.dest} holds {size:.1f} MiB of wheels (a device call carries at most 64 MiB)")


if __name__ == "__main__":
    main()
