"""What each hand-written speed-up saves of the whole default pipeline; writes
``benchmarks/results/speedups.json``.

The rule (the project's brief): a hand-written speed-up stays only if it saves at least 3% of the
whole pipeline's job-seconds, measured. Each variant is the committed ``HEAD`` cloned afresh, with
one speed-up turned off, and the default pipeline run from scratch (``snakemake --cores N`` with
this environment's Snakemake), one variant after another on an otherwise idle machine; job-seconds
and span come from each run's Snakemake log (:func:`pipeline_time.parse_log`), and every variant's
outputs are compared byte for byte with the first's (``identical``).

Variants (``--variants``):

- ``as_is``: the code as committed;
- ``no_group_deltas``: coarsely grouped linear layers averaged after ``backward()`` like the other
  layers, instead of trained through group deltas (``GroupedGradient.prepare`` returns the
  parameters unchanged; its numbers differ by float rounding);
- ``system_malloc``: glibc's malloc defaults (``KSHOT_MALLOC=system``) instead of
  :func:`kshot.runtime.keep_freed_memory`'s.

``--from-logs NAME=LOG ...`` only reads existing Snakemake logs (runs made by hand the same way).
Run it inside the environment: ``python benchmarks/speedups.py`` (about 13 minutes per variant on
2 CPU cores).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline_time import matmul_gflops, parse_log  # noqa: E402

# name: (environment variables, (file, line as committed, line in the variant) or None)
VARIANTS: dict[str, tuple[dict[str, str], tuple[str, str, str] | None]] = {
    "as_is": ({}, None),
    "no_group_deltas": (
        {},
        (
            "kshot/shared_grad.py",
            "        return self.attach(trainable) if linear_update else trainable",
            "        return trainable",
        ),
    ),
    "system_malloc": ({"KSHOT_MALLOC": "system"}, None),
}
COMPARED = ("data/checkpoints", "data/activations", "data/groups", "data/search", "reports/tables")


def outputs(root: Path) -> set[Path]:
    return {p.relative_to(root) for sub in COMPARED for p in (root / sub).rglob("*") if p.is_file()} | {
        p.relative_to(root) for p in (root / "data" / "runs").rglob("metrics.json")
    }


def identical(a: Path, b: Path) -> bool:
    files = outputs(a) | outputs(b)
    return all((a / f).is_file() and (b / f).is_file() and filecmp.cmp(a / f, b / f, False) for f in files)


def run_variant(name: str, cores: int, work: Path) -> tuple[dict[str, Any], Path]:
    env_extra, patch = VARIANTS[name]
    clone = work / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    if patch is not None:
        path, before, after = patch
        text = (clone / path).read_text()
        if text.count(before) != 1:
            raise SystemExit(f"speedups: variant {name}: expected the line {before.strip()!r} once in {path}")
        (clone / path).write_text(text.replace(before, after))
    env = {**os.environ, **env_extra}
    start = time.perf_counter()
    with (clone / "run.log").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", str(cores)],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        raise SystemExit(f"speedups: variant {name} failed; see {clone / 'run.log'}")
    logs = sorted((clone / ".snakemake" / "log").glob("*.snakemake.log"))
    result = {"wall_s": time.perf_counter() - start, **parse_log(logs[-1].read_text())}
    return result, clone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--from-logs", nargs="+", metavar="NAME=LOG", help="only read these logs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speedups.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from kshot.io import write_json
    from kshot.runtime import cpu_description

    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(), "variants": {}}
    if args.from_logs:
        for item in args.from_logs:
            name, _, log = item.partition("=")
            out["variants"][name] = {"log": log, **parse_log(Path(log).read_text())}
    else:
        out["matmul_gflops_before"] = matmul_gflops()
        work = Path(tempfile.mkdtemp(prefix="kshot-speedups-"))
        try:
            first = None
            for name in args.variants:
                print(f"speedups: {name} ...", flush=True)
                result, clone = run_variant(name, args.cores, work)
                first = first or clone
                result["identical_to_first"] = identical(first, clone)
                out["variants"][name] = result
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out["matmul_gflops_after"] = matmul_gflops()
    base = next(iter(out["variants"].values()))["job_seconds"]
    for name, r in out["variants"].items():
        pct = r["job_seconds_vs_first_pct"] = 100 * (r["job_seconds"] / base - 1)
        print(f"{name:16s} {r['jobs']:3d} jobs {r['job_seconds']:7.0f} job-s ({pct:+.1f}%)")
    write_json(args.out, out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
