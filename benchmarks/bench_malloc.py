"""What keeping freed memory in the process (``kshot.runtime``) saves; writes
``benchmarks/results/bench_malloc.json``.

One job of the default pipeline (by default the k=5 RL search of ``fashion_to_digits``, its longest) runs
with glibc's default malloc (``KSHOT_MALLOC=system``) and with kshot's setting, alternately,
``--repeats`` times each; the job's own command comes from the rule, as in ``peak_memory.py``, with
its outputs redirected into a temporary folder. Reported per variant: the fastest wall time and
that run's user and system CPU seconds; and whether both variants wrote byte-identical outputs.

Run from the repository root with the venv active, after the default pipeline has produced its
inputs: ``python benchmarks/bench_malloc.py [--target ... --rule search]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from peak_memory import ROOT, redirect_outputs, rule_commands

from kshot.io import write_json
from kshot.runtime import cpu_description

VARIANTS = {"glibc_default": "system", "kshot": None}  # the KSHOT_MALLOC value of each


def timed(argv: list[str], malloc: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "KSHOT_MALLOC"}
    if malloc is not None:
        env["KSHOT_MALLOC"] = malloc
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="data/search/fashion_to_digits/k5/reinforce.json")
    parser.add_argument("--rule", default="search")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_malloc.json"))
    args = parser.parse_args()
    command = rule_commands(args.target, [args.rule])[args.rule]
    best: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, malloc in VARIANTS.items():
                out_dir = Path(tmp) / name
                run = timed(redirect_outputs(command, out_dir), malloc)
                if name not in best or run["wall_s"] < best[name]["wall_s"]:
                    best[name] = run
                outputs[name] = [p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        **best,
        "wall_ratio": best["kshot"]["wall_s"] / best["glibc_default"]["wall_s"],
        "identical_outputs": outputs["kshot"] == outputs["glibc_default"],
    }
    write_json(args.out, result)
    for name in VARIANTS:
        r = best[name]
        print(f"{name}: {r['wall_s']:.1f} s wall, {r['user_s']:.1f} s user, {r['sys_s']:.1f} s system")
    print(f"ratio {result['wall_ratio']:.3f}, identical outputs: {result['identical_outputs']} -> {args.out}")


if __name__ == "__main__":
    main()
