"""Peak resident memory of every job of a photo-sized target; writes
``benchmarks/results/photo_memory.json``.

Generates an Office-31-like tree of ``--classes`` x ``--per-class`` JPEG photos of several sizes
(4,000 by default), a torchvision ResNet-18 weights file, and a params file that stores the tree at
224x224 (``data.image_folder_side``), takes classes 0-9 as the source (the weights as they are, the
source head fitted: ``epochs: 0``) and the other classes as the target at k = 10, and runs the
pipeline there (``snakemake --cores 1``, one job at a time) with the fine-tuning methods of the
ResNet-18 study, cut short (2 steps, 1 episode: memory, not accuracy, is measured). A sampler reads
the peak resident set of every kshot process working there (``VmHWM`` in ``/proc/<pid>/status``,
the kernel's own high-water mark) and its private part (``RssAnon``) every 0.1 s; the JSON lists
each job's and the largest. The issue's target: every job under 2 GiB resident.

Run it inside the environment: ``python benchmarks/photo_memory.py`` (about 10 minutes on 2 CPU
cores; ``--keep`` keeps the work folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_tree(root: Path, classes: int, per_class: int, seed: int = 0) -> int:
    """Smooth synthetic photos (upsampled colour noise, so JPEGs stay small), 160-320 px a side."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    total = 0
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = (int(v) for v in torch.randint(160, 321, (2,), generator=g))
            low = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8).float()
            low[c % 3] = low[c % 3] * 0.5 + 127  # a colour cast per class
            img = torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear")[0]
            Image.fromarray(img.clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(
                folder / f"{i}.jpg", quality=85
            )
            total += 1
    return total


def params(tree: Path, weights: Path, classes: int) -> dict[str, Any]:
    half = classes // 2
    return {
        "seed": 0,
        "device": "cpu",
        "data": {"image_folders": {"photos": str(tree)}, "image_folder_side": 224},
        "sources": {
            "photos_src": {
                "dataset": "photos",
                "classes": list(range(half)),
                "backbone": "resnet18",
                "pretrained": str(weights),
                "epochs": 0,
                "batch_size": 64,
                "threads": 2,
            }
        },
        "benchmarks": {
            "photos": {
                "source": "photos_src",
                "target": "photos",
                "target_classes": list(range(half, classes)),
            }
        },
        "episodes": {
            "k": [10],
            "n_episodes": 1,
            "val_per_class": 5,
            "test_per_class": 20,
            "search_episodes": 1,
            "select_episodes": 1,
        },
        "finetune": {"steps": 2, "eval_every": 1},
        "search": {"budget": 2, "steps": 1, "finalists": 1, "tie": "stage", "menu": [0.25, 1.0]},
        "methods": {
            "full": {"kind": "full", "tune": {"lr": [0.01, 0.03]}},
            "linear": {"kind": "linear", "lr": 0.1},
            "centroid": {"kind": "centroid"},
            "grouped": {"kind": "grouped", "groups": 0.25},
            "grouped_pool": {"kind": "grouped", "groups": 0.25, "features": "support+pool", "pool_size": 200},
            "grouped_rl": {"kind": "grouped_rl", "search": "reinforce"},
        },
        "run": {
            "benchmarks": ["photos"],
            "methods": ["full", "full+tuned", "linear", "centroid", "grouped", "grouped_pool", "grouped_rl"],
        },
        "ablation": [],
    }


class PeakSampler(threading.Thread):
    """Every kshot process working in ``cwd``: its command line, its peak resident set (VmHWM, the
    kernel's high-water mark) and the largest private part of it seen (RssAnon: the memory the job
    itself allocated, without the pages of shared libraries such as torch's, about 0.7 GiB of the
    resident set of any process that imports torch), sampled until stopped."""

    def __init__(self, cwd: Path, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.cwd, self.interval, self.stop = cwd.resolve(), interval, threading.Event()
        self.peaks: dict[tuple[str, str], tuple[int, int]] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    if "-m kshot " not in cmd or Path(f"/proc/{pid}/cwd").resolve() != self.cwd:
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                kib = {
                    line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if "kB" in line
                }
                old = self.peaks.get((pid, cmd), (0, 0))
                self.peaks[(pid, cmd)] = (
                    max(old[0], kib.get("VmHWM", 0)),
                    max(old[1], kib.get("RssAnon", 0)),
                )
            time.sleep(self.interval)


def job_name(cmd: str) -> str:
    """``<command> <wildcard values>`` of a ``python -m kshot`` command line."""
    words = cmd.split()
    command = words[words.index("kshot") + 1]
    picked = [
        words[i + 1]
        for i, w in enumerate(words[:-1])
        if w in ("--method", "--k", "--dataset", "--tag", "--strategy")
    ]
    return " ".join([command, *picked])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "photo_memory.json"))
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    import torchvision

    from kshot.io import write_json
    from kshot.runtime import cpu_description

    work = Path(tempfile.mkdtemp(prefix="kshot-photo-memory-"))
    try:
        start = time.perf_counter()
        n = make_tree(work / "tree", args.classes, args.per_class)
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), work / "resnet18.pth")
        (work / "params.yaml").write_text(
            yaml.safe_dump(params(work / "tree", work / "resnet18.pth", args.classes))
        )
        tree_mib = sum(p.stat().st_size for p in (work / "tree").rglob("*.jpg")) / 2**20
        print(
            f"photo_memory: {n} photos ({tree_mib:.0f} MiB) in {time.perf_counter() - start:.0f} s; "
            "running the pipeline"
        )
        sampler = PeakSampler(work)
        sampler.start()
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(work),
            "--cores",
            "1",
        ]
        run_start = time.perf_counter()
        proc = subprocess.run([*cmd, "stage_finetune"], env=env, capture_output=True, text=True)
        run_s = time.perf_counter() - run_start
        sampler.stop.set()
        sampler.join()
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit("photo_memory: the pipeline failed")
        jobs: dict[str, float] = {}
        private: dict[str, float] = {}
        for (_, command), (hwm, anon) in sampler.peaks.items():
            name = job_name(command)
            jobs[name] = max(jobs.get(name, 0.0), hwm / 1024)
            private[name] = max(private.get(name, 0.0), anon / 1024)
        prepared = work / "data" / "prepared" / "targets" / "photos.pt"
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "cpu": cpu_description(),
            "photos": n,
            "tree_mib": tree_mib,
            "stored_side": 224,
            "prepared_target_mib": prepared.stat().st_size / 2**20,
            "run_s": run_s,
            "peak_mib_by_job": dict(sorted(jobs.items(), key=lambda kv: -kv[1])),
            "private_mib_by_job": dict(sorted(private.items(), key=lambda kv: -kv[1])),
            "private_mib_max": max(private.values()),
            "peak_mib_max": max(jobs.values()),
            "under_2_gib": max(jobs.values()) < 2048,
        }
        write_json(args.out, result)
        print(f"photo_memory: largest job {result['peak_mib_max']:.0f} MiB ({run_s:.0f} s) -> {args.out}")
        for name, mib in result["peak_mib_by_job"].items():
            print(f"  {mib:7.0f} MiB (private {private[name]:5.0f} MiB)  {name}")
    finally:
        if args.keep:
            print(f"photo_memory: work folder kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
