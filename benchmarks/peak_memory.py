"""Peak resident memory of the heaviest default jobs; writes ``benchmarks/results/peak_memory.json``.

The commands are the rules' own: a Snakemake dry run (``-n -p --forcerun``) of the target prints
each job's shell command, whose output paths are then redirected into a temporary folder, so the
existing ``data/`` is read but never written. Each command runs under ``/usr/bin/time -v`` (GNU
time), which reports the maximum resident set size of the process.

Run from the repository root with the venv active, after the default pipeline has produced its
inputs: ``python benchmarks/peak_memory.py [--target data/runs/fashion_to_digits/full/k5/metrics.json]``
(the default run's largest support set: 10-way, k = 5).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kshot.io import write_json
from kshot.runtime import cpu_description

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_FLAGS = ("--out", "--metrics", "--out-dir")


def rule_commands(target: str, rules: list[str]) -> dict[str, str]:
    """The shell command of each of ``rules`` on the way to ``target``, from a forced dry run."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--forcerun", *rules, "--", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    commands, rule = {}, None
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):", line.strip()):
            rule = m.group(1)
        elif line.startswith("Shell command: ") and rule in rules:
            commands.setdefault(rule, line.removeprefix("Shell command: "))
    missing = [r for r in rules if r not in commands]
    if missing:
        raise SystemExit(f"no shell command found for rules {missing} on the way to {target}")
    return commands


def redirect_outputs(command: str, out_dir: Path) -> list[str]:
    """argv of ``command`` without its log redirection, every output path moved under ``out_dir``."""
    argv = shlex.split(command)
    argv = argv[: argv.index(">")] if ">" in argv else argv
    for i, arg in enumerate(argv[:-1]):
        if arg in OUTPUT_FLAGS:
            argv[i + 1] = str(out_dir / arg.lstrip("-") / Path(argv[i + 1]).name)
    return [sys.executable if a == "python" else a for a in argv]


def peak_rss(argv: list[str]) -> dict[str, float]:
    """Run ``argv`` under GNU time; its peak RSS (MiB) and wall time (s)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(argv)}\n{proc.stderr[-3000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"peak_rss_mib": round(kib / 1024, 1), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="data/runs/fashion_to_digits/full/k5/metrics.json")
    parser.add_argument("--rules", nargs="+", default=["prepare_source", "pretrain", "finetune"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peak_memory.json"))
    args = parser.parse_args()
    commands = rule_commands(args.target, args.rules)
    jobs = {}
    # what the interpreter, torch and kshot take before any data: the floor under every job
    jobs["import_only"] = {
        "command": "import kshot.cli, kshot.runner",
        **peak_rss([sys.executable, "-c", "import kshot.cli, kshot.runner, kshot.pretrain"]),
    }
    with tempfile.TemporaryDirectory(prefix="kshot-peak-") as tmp:
        for rule, command in commands.items():
            argv = redirect_outputs(command, Path(tmp) / rule)
            jobs[rule] = {"command": shlex.join(argv[1:]), **peak_rss(argv)}
            print(f"{rule}: {jobs[rule]['peak_rss_mib']} MiB peak RSS, {jobs[rule]['wall_s']} s", flush=True)
    write_json(
        args.out,
        {
            "date": time.strftime("%Y-%m-%d"),
            "target": args.target,
            "jobs": jobs,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": cpu_description()},
        },
    )


if __name__ == "__main__":
    main()
