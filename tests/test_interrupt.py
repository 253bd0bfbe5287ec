"""Interruption and bad input through the real Snakefile.

The fine-tuning job is killed (SIGTERM, then SIGKILL, to the whole process group as a scheduler or a
dying node would) while it works through its episodes; reruns must reuse the finished episode files
untouched and end with a ``metrics.json`` byte-identical to an uninterrupted run's (so this is also
the determinism check across processes and entry points). Upstream files
are built in-process (tests/upstream.py) so only the fine-tuning job runs under Snakemake.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_PARAMS
from upstream import build_upstream

from kshot.params import params_from_dict, parse_method
from kshot.runner import StageInputs, run_episodes

RUN = Path("data/runs/tiny/full/k1")
N_EPISODES = 6


def snakemake_cmd(workdir: Path, *targets: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
        "--cores", "1", *targets,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        snakemake_cmd(workdir, *targets), env=env(), capture_output=True, text=True, timeout=300
    )


def finished_episodes(workdir: Path) -> dict[str, tuple[int, int]]:
    """Finished episode files (hidden temporaries excluded) -> (inode, mtime in ns)."""
    folder = workdir / RUN / "episodes"
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("ep*.json"))}


def kill_after(workdir: Path, n_done: int, sig: int) -> dict[str, tuple[int, int]]:
    """Start the fine-tuning, send ``sig`` to its process group once ``n_done`` episodes are on disk,
    and return the finished episodes seen after it stopped."""
    proc = subprocess.Popen(
        snakemake_cmd(workdir, str(RUN / "metrics.json")),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(finished_episodes(workdir)) < n_done:
        assert proc.poll() is None, "the pipeline ended before it could be interrupted"
        assert time.monotonic() < deadline, "no episode finished in time"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    time.sleep(0.5)  # let orphaned children of a SIGTERMed job die too
    return finished_episodes(workdir)


@pytest.fixture(scope="module")
def long_params() -> dict:
    """The tiny params with fine-tuning long enough (about a second per episode) to be killed mid-way."""
    raw = copy.deepcopy(TINY_PARAMS)
    raw["episodes"]["n_episodes"] = N_EPISODES
    raw["finetune"] = {"steps": 300, "lr": 0.01, "eval_every": 50}
    raw["run"]["methods"] = ["full"]
    return raw


def reference_metrics(work: Path, raw: dict, out_dir: Path) -> bytes:
    """metrics.json of an uninterrupted run, in-process with the job's one torch thread (the rule
    passes --threads 1), from the same upstream files."""
    params = params_from_dict(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_episodes(
            benchmark="tiny",
            method_name="full",
            spec=parse_method("full", raw["methods"]["full"]),
            finetune=params.finetune,
            k=1,
            inputs=StageInputs(
                work / "data/checkpoints/digits04/source.pt",
                work / "data/prepared/targets/tiny.pt",
                work / "data/episodes/tiny/k1.json",
            ),
            out_dir=out_dir,
            seed=params.seed,
            device=torch.device("cpu"),
        )
    finally:
        torch.set_num_threads(threads)
    return (out_dir / "metrics.json").read_bytes()


@pytest.mark.slow
def test_killed_finetuning_resumes_without_redoing_episodes_and_matches_an_uninterrupted_run(
    tmp_path, long_params
):
    work = tmp_path / "work"
    (work).mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(long_params))
    build_upstream(work, long_params)
    expected = reference_metrics(work, long_params, tmp_path / "reference")

    after_term = kill_after(work, 1, signal.SIGTERM)
    assert 1 <= len(after_term) < N_EPISODES
    assert not (work / RUN / "metrics.json").exists()

    after_kill = kill_after(work, len(after_term) + 2, signal.SIGKILL)
    assert len(after_term) + 2 <= len(after_kill) < N_EPISODES
    assert not (work / RUN / "metrics.json").exists()
    for name, ident in after_term.items():
        assert after_kill[name] == ident, f"{name} was redone after SIGTERM"

    # SIGKILL left Snakemake's lock behind; removing it is what `snakemake --unlock` does
    shutil.rmtree(work / ".snakemake" / "locks")
    proc = snakemake(work, str(RUN / "metrics.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    final = finished_episodes(work)
    assert len(final) == N_EPISODES
    for name, ident in after_kill.items():
        assert final[name] == ident, f"{name} was redone after SIGKILL"
    assert (work / RUN / "metrics.json").read_bytes() == expected
    assert not list((work / "data").rglob("*.tmp")), "a temporary file outlived the resumed run"


@pytest.mark.slow
def test_infeasible_k_through_snakemake_stops_before_any_job_with_a_named_message(tmp_path):
    raw = copy.deepcopy(TINY_PARAMS)
    build_upstream(tmp_path, raw, episodes=False)
    raw["episodes"]["val_per_class"] = 500  # digits has about 90 pool images per class
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(tmp_path, "data/episodes/tiny/k1.json")
    assert proc.returncode != 0
    assert not (tmp_path / "data" / "episodes" / "tiny" / "k1.json").exists()
    # the prepared target already exists, so the sizes are checked while the DAG is built
    assert not (tmp_path / "data" / "logs" / "episodes" / "tiny_k1.log").exists()
    lines = [line for line in proc.stderr.splitlines() if "k=1 plus episodes.val_per_class=500" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "episodes.k" in lines[0] and "needs 501 images per class" in lines[0]
    assert "Nothing to be done" not in proc.stdout + proc.stderr
