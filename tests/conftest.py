"""Shared fixtures: tiny images, a tiny pre-trained LeNet and a tiny params mapping."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kshot.models import LeNet
from kshot.runtime import keep_freed_memory

keep_freed_memory()  # as the CLI does: the suite runs faster with the same numbers

REPO = Path(__file__).resolve().parents[1]

TINY_PARAMS = {
    "seed": 0,
    "device": "cpu",
    "data": {"raw_dir": "data/raw"},
    "sources": {
        "digits04": {
            "dataset": "digits",
            "classes": [0, 1, 2, 3, 4],
            "backbone": "lenet",
            "image_size": 28,
            "max_per_class": 40,
            "epochs": 1,
            "batch_size": 32,
            "width": 0.5,
        }
    },
    "benchmarks": {"tiny": {"source": "digits04", "target": "digits", "target_classes": [5, 6, 7, 8, 9]}},
    "episodes": {
        "k": [1],
        "n_episodes": 2,
        "val_per_class": 2,
        "test_per_class": 6,
        "search_episodes": 1,
        "select_episodes": 1,
    },
    "finetune": {"steps": 4, "lr": 0.01, "eval_every": 2},
    "methods": {
        "full": {"kind": "full", "tune": {"lr": [0.01, 0.1]}},
        "linear": {"kind": "linear", "lr": 0.1},
        "centroid": {"kind": "centroid"},
        "l2sp": {"kind": "l2sp", "alpha": 0.01, "beta": 0.01},
        "grouped": {"kind": "grouped", "groups": 0.5},
        "grouped_random": {"kind": "grouped_random", "groups": 0.5},
        "grouped_rl": {"kind": "grouped_rl", "search": "reinforce"},
    },
    "search": {"budget": 3, "menu": [0.25, 1.0], "finalists": 1},
    "run": {
        "benchmarks": ["tiny"],
        "methods": [
            "full",
            "full+tuned",
            "linear",
            "centroid",
            "l2sp",
            "grouped",
            "grouped_random",
            "grouped_rl",
        ],
    },
}


def with_regime_only_runs(params: dict) -> dict:
    """``params`` plus what only a regime study would run: a wider source (``digits04_wide``) with
    its benchmark (``tiny_wide``), and a longer fine-tuning (``full_long``). Returns ``params``."""
    params["sources"]["digits04_wide"] = {**params["sources"]["digits04"], "width": 1.0}
    params["benchmarks"]["tiny_wide"] = {**params["benchmarks"]["tiny"], "source": "digits04_wide"}
    params["methods"]["full_long"] = {"kind": "full", "steps": 8}
    return params


@pytest.fixture
def tiny_params() -> dict:
    """A fresh deep copy of the tiny params mapping (tests may mutate it)."""
    return copy.deepcopy(TINY_PARAMS)


def make_images(n_per_class: int, n_classes: int, side: int = 28, seed: int = 0):
    """Separable synthetic images: class c is bright in horizontal band c. uint8 [N, 1, S, S]."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * n_classes
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 60, (n, 1, side, side), generator=g).float()
    band = side // n_classes
    for c in range(n_classes):
        x[labels == c, :, c * band : (c + 1) * band, :] += 150
    return x.clamp(0, 255).to(torch.uint8), labels


@pytest.fixture
def tiny_model() -> LeNet:
    """A LeNet (half width) briefly trained on 3 synthetic classes."""
    torch.manual_seed(0)
    model = LeNet(1, 28, 3, width=0.5)
    x, y = make_images(20, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x.float() / 255), y).backward()
        opt.step()
    return model


# ---------------------------------------------------------------- the real Snakefile on the tiny config


def run_snakemake(
    workdir: Path, *extra: str, check: bool = True, quiet: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        *(["--quiet", "rules"] if quiet else []),
        *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        logs = "\n".join(p.read_text()[-2000:] for p in (workdir / "data" / "logs").rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}")
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole tiny pipeline run once, locally (tests copy it before changing anything)."""
    workdir = tmp_path_factory.mktemp("pipeline")
    (workdir / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    run_snakemake(workdir)
    return workdir


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the SLURM test's cluster and run in the background (``test_slurm.Background``) where
    its tests are selected, so that its waits overlap the other tests."""
    if session.config.option.collectonly:
        return
    slurm = slurm_module(session)
    if slurm is not None:  # the module as pytest imported it: its fixtures wait for what this starts
        root = session.config._tmp_path_factory.mktemp("slurm-background")  # pytest's tmp folder
        slurm.start_in_background(root)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop what :func:`pytest_collection_finish` started, where it is still running."""
    slurm = slurm_module(session)
    if slurm is not None:
        slurm.stop_background()


def slurm_module(session: pytest.Session):
    """The module ``test_slurm`` as pytest imported it, where its tests are selected; else None."""
    items = [item for item in getattr(session, "items", []) if Path(str(item.fspath)).name == "test_slurm.py"]
    return items[0].module if items else None
