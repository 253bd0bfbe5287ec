"""The GPU check: the default pipeline, the ResNet-18 study and the search benchmark on one GPU;
writes ``<out>/gpu_check.json`` after every section and ``<out>/progress.log`` as it goes, so that a
run stopped at its limit still returns what it measured.

Sections (``--sections``, in this order):

- ``env``: torch, CUDA, the GPU's name and memory;
- ``default``: the committed ``HEAD`` cloned afresh (or the working tree copied, without a ``.git``)
  and ``snakemake --profile workflow/profiles/gpu`` run there: wall time, jobs, per-rule
  job-seconds (:func:`pipeline_time.parse_log`); target at most 3 minutes on an H100/H200;
- ``resnet``: ``snakemake ... resnet`` in the same clone (the ResNet-18 study); target at most 10
  minutes; a run stopped at ``--resnet-limit`` reports the jobs it finished;
- ``search``: ``bench_grouping.py --sections search``: grouped fine-tunings per minute of the
  search's inner loop, one population (:mod:`kshot.population`) against one after another, for 8
  members at k = 1 and 5 (target: the population at least 3x the loop at k = 5).

On the GPU machine: ``python3 benchmarks/gpu_check.py --out $OUT`` (its Python holds torch; the
packages it lacks travel as wheels, see ``benchmarks/README.md``). First on CPU, to catch every
error cheaply: ``python benchmarks/gpu_check.py --device cpu --params <small params> --targets
<target> --out /tmp/gpu_check`` (``tests/test_gpu_check.py`` does so on the tiny config).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline_time import parse_log  # noqa: E402

SECTIONS = ("env", "default", "resnet", "search")


class Progress:
    """The result so far, written whole after each step, and a log line per step."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json, self.log = out / "gpu_check.json", out / "progress.log"
        self.result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}}
        self.start = time.perf_counter()

    def say(self, text: str) -> None:
        line = f"[{time.perf_counter() - self.start:7.1f} s] {text}"
        print(line, flush=True)
        with self.log.open("a") as f:
            f.write(line + "\n")

    def save(self, section: str, value: Any) -> None:
        import json

        self.result["sections"][section] = value
        self.result["wall_s"] = time.perf_counter() - self.start
        tmp = self.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.json)


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": props.name if props else None,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1) if props else None,
        "cpu_count": os.cpu_count(),
    }


def clone(into: Path, params: Path | None) -> Path:
    """The committed HEAD cloned into ``into`` (the working tree copied where there is no .git),
    with ``params`` (if given) as its params.yaml."""
    work = into / "kshot"
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    else:
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".venv", "data", ".snakemake", ".whl"))
    if params is not None:
        shutil.copyfile(params, work / "params.yaml")
    return work


def snakemake(
    work: Path, targets: list[str], args: argparse.Namespace, limit: float, progress: Progress
) -> dict[str, Any]:
    """Run Snakemake in ``work`` with the GPU profile (``--device`` overriding params); the
    result of its log, stopped at ``limit`` seconds if it runs longer."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "workflow/profiles/gpu",
        "--cores",
        str(args.cores),
    ]
    cmd += ["--config", f"device={args.device}", "--keep-going", *targets]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")]))
    )
    progress.say(f"snakemake {' '.join(targets) or '(default)'} in {work} (limit {limit:.0f} s)")
    start = time.perf_counter()
    with (work / f"snakemake-{'_'.join(targets) or 'all'}.out").open("w") as out:
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=limit)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - start
    logs = sorted((work / ".snakemake" / "log").glob("*.snakemake.log"), key=os.path.getmtime)
    parsed = parse_log(logs[-1].read_text()) if logs else {}
    progress.say(f"  -> exit {code}, {wall:.0f} s, {parsed.get('jobs', 0)} jobs finished")
    return {"wall_s": wall, "exit_code": code, "stopped_at_limit": code is None, "limit_s": limit, **parsed}


def search_benchmark(args: argparse.Namespace, out: Path, progress: Progress) -> dict[str, Any]:
    import json

    path = out / "bench_grouping.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_grouping.py"), "--device", args.device]
    cmd += ["--sections", "search", "--members", str(args.members), "--threads", "1", "--out", str(path)]
    cmd += [
        "--repeats",
        str(args.repeats),
        "--train-steps",
        str(args.train_steps),
        "--low-steps",
        str(args.train_steps // 2),
    ]
    progress.say("search benchmark: " + " ".join(cmd[2:]))
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=args.search_limit)
    bench = json.loads(path.read_text())
    rows = bench["settings"][0]["search_throughput"]
    return {"rows": rows, "file": path.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks/measured/gpu_check"))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--params", type=Path, help="a params file to run instead of the committed one")
    parser.add_argument("--targets", nargs="*", default=[], help="the default section's targets")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--default-limit", type=float, default=240.0)
    parser.add_argument("--resnet-limit", type=float, default=150.0)
    parser.add_argument("--search-limit", type=float, default=60.0)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    progress = Progress(out)
    progress.say(f"gpu_check: sections {args.sections}, device {args.device}")
    if "env" in args.sections:
        progress.save("env", environment())
        progress.say(f"env: {progress.result['sections']['env']}")
    tmp = Path(tempfile.mkdtemp(prefix="kshot-gpu-check-"))
    try:
        work = clone(tmp, args.params) if {"default", "resnet"} & set(args.sections) else None
        if "default" in args.sections and work is not None:
            progress.save("default", snakemake(work, args.targets, args, args.default_limit, progress))
        if "resnet" in args.sections and work is not None:
            progress.save("resnet", snakemake(work, ["resnet"], args, args.resnet_limit, progress))
        if "search" in args.sections:
            progress.save("search", search_benchmark(args, out, progress))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress.say(f"gpu_check: done -> {progress.json}")


if __name__ == "__main__":
    main()
