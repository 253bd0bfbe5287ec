"""Wall time of the default pipeline from a fresh clone, as the README's quick start runs it;
writes ``benchmarks/results/pipeline_time.json``.

Clones the repository's committed ``HEAD`` into a temporary folder and runs ``make setup`` there
(the virtual environment and its packages), then ``make run`` (the setup is then a no-op, so this
is Snakemake's run of the default pipeline), timing each. From Snakemake's log of the run it reads
the number of jobs, the span from the first job's start to the last job's end, each rule's
job-seconds (the sum over its jobs of finish minus start, to the second: the CPU work to share
among the cores) and, for the jobs with a ``method`` wildcard, each rule's job-seconds per method.
A large float32 matmul's GFLOP/s, on one thread before and after the run, puts the machine's
speed of the day beside the times: on a shared machine it moves them by a fifth from
day to day. The run's tables and ``reports/metrics.json`` are compared byte for byte with the
working tree's, where it has them.

Run it inside the environment, with nothing else busy: ``python benchmarks/pipeline_time.py``
(about 16 minutes on 2 CPU cores, setup included); ``--log <snakemake log>`` only reads an existing run's log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("reports/metrics.json", "reports/tables")

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")
_START = re.compile(r"^\s+jobid: (\d+)$")
_END = re.compile(r"^Finished jobid: (\d+) \(Rule: ([\w-]+)\)$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
_ELAPSED = re.compile(r"^Elapsed time: (?:(\d+) days?, )?(\d+):(\d+):([\d.]+)$")


def parse_log(text: str) -> dict[str, Any]:
    """Jobs, span and per-rule job-seconds of one Snakemake run from its log's text.

    A job starts at the timestamp line above its ``jobid:`` line and ends at the one above its
    ``Finished jobid: N (Rule: R)`` line; jobs that never finish (a failed run) are counted in
    ``unfinished``."""
    now: dt.datetime | None = None
    started: dict[str, dt.datetime] = {}
    per_rule: dict[str, list[float]] = defaultdict(list)
    per_method: dict[str, list[float]] = defaultdict(list)  # "rule method": the jobs with a method
    method_of: dict[str, str] = {}
    job = None
    first = last = None
    elapsed = None
    for line in text.splitlines():
        if m := _STAMP.match(line):
            now = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif (m := _START.match(line)) and now is not None:
            started.setdefault(m.group(1), now)
            job = m.group(1)
            first = first or now
        elif (m := _WILDCARDS.match(line)) and job is not None:
            wildcards = dict(w.split("=", 1) for w in m.group(1).split(", ") if "=" in w)
            if "method" in wildcards:
                method_of[job] = wildcards["method"]
        elif (m := _END.match(line)) and m.group(1) in started and now is not None:
            seconds = (now - started.pop(m.group(1))).total_seconds()
            per_rule[m.group(2)].append(seconds)
            if m.group(1) in method_of:
                per_method[f"{m.group(2)} {method_of[m.group(1)]}"].append(seconds)
            last = now
        elif m := _ELAPSED.match(line):
            days, h, mi, s = m.groups()
            elapsed = int(days or 0) * 86400 + int(h) * 3600 + int(mi) * 60 + float(s)
    rules = {
        rule: {"jobs": len(ds), "job_s": sum(ds), "mean_s": sum(ds) / len(ds), "max_s": max(ds)}
        for rule, ds in sorted(per_rule.items(), key=lambda kv: -sum(kv[1]))
    }
    job_s = sum(r["job_s"] for r in rules.values())
    total = job_s or 1.0  # shares of nothing (e.g. only the `all` rule ran) are 0
    return {
        "jobs": sum(r["jobs"] for r in rules.values()),
        "unfinished": len(started),
        "job_seconds": job_s,
        "span_s": (last - first).total_seconds() if first and last else None,
        "snakemake_elapsed_s": elapsed,
        "rules": {r: {**v, "share": v["job_s"] / total} for r, v in rules.items()},
        "methods": {
            key: {"jobs": len(ds), "job_s": sum(ds), "share": sum(ds) / total}
            for key, ds in sorted(per_method.items(), key=lambda kv: -sum(kv[1]))
        },
    }


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """One thread's float32 matmul GFLOP/s (the machine's speed of the moment)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
    finally:
        torch.set_num_threads(threads)


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` in ``cwd`` with its output to ``log``; seconds taken. Raises on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"pipeline_time: '{' '.join(cmd)}' failed with exit code {proc.returncode}; see {log}"
        )
    return seconds


def same_outputs(clone: Path, tree: Path) -> bool | None:
    """Whether the clone's tables and metrics equal the working tree's byte for byte (``None``
    where the working tree has none to compare with)."""
    pairs = []
    for rel in COMPARED:
        a, b = clone / rel, tree / rel
        if not b.exists():
            return None
        if b.is_dir():  # the files of both sides: one missing on either side is a difference
            files = {
                p.relative_to(root)
                for root in (a, b)
                if root.is_dir()
                for p in root.rglob("*")
                if p.is_file()
            }
        else:
            files = {Path()}
        pairs += [(a / f, b / f) for f in sorted(files)]
    return all(x.is_file() and y.is_file() and filecmp.cmp(x, y, shallow=False) for x, y in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_time.json"))
    parser.add_argument("--log", help="only read this Snakemake log (no run)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    from kshot.io import write_json
    from kshot.runtime import cpu_description

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
    }
    if args.log:
        result["log"] = args.log
        result.update(parse_log(Path(args.log).read_text()))
    else:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        clone = Path(tempfile.mkdtemp(prefix="kshot-pipeline-time-"))
        try:
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            result.update(commit=commit, cores=args.cores, matmul_gflops_before=matmul_gflops())
            print(f"pipeline_time: commit {commit[:10]} in {clone}: make setup ...", flush=True)
            result["setup_s"] = timed(["make", "setup"], clone, clone / "setup.log")
            print(f"pipeline_time: setup {result['setup_s']:.0f} s; make run ...", flush=True)
            result["run_s"] = timed(["make", "run", f"CORES={args.cores}"], clone, clone / "run.log")
            result["total_s"] = result["setup_s"] + result["run_s"]
            result["matmul_gflops_after"] = matmul_gflops()
            logs = sorted((clone / ".snakemake" / "log").glob("*.snakemake.log"))
            result.update(parse_log(logs[-1].read_text()))
            result["outputs_identical_to_working_tree"] = same_outputs(clone, ROOT)
        finally:
            if args.keep:
                print(f"pipeline_time: clone kept at {clone}")
            else:
                shutil.rmtree(clone, ignore_errors=True)
    write_json(args.out, result)
    span = f"{result['span_s']:.0f} s" if result["span_s"] is not None else "none (no job finished)"
    print(
        f"jobs {result['jobs']}, {result['job_seconds']:.0f} job-seconds, span {span}"
        + (f"; setup {result['setup_s']:.0f} s, run {result['run_s']:.0f} s" if "run_s" in result else "")
    )
    for rule, r in result["rules"].items():
        print(f"  {rule:16s} {r['jobs']:3d} jobs {r['job_s']:7.0f} s ({100 * r['share']:.0f}%)")
    print("per rule and method:")
    for key, r in result["methods"].items():
        print(f"  {key:32s} {r['jobs']:3d} jobs {r['job_s']:7.0f} s ({100 * r['share']:.0f}%)")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
