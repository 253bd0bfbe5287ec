"""A real SLURM cluster: `scripts/slurm-local up` starts a one-node cluster on this machine (Debian's
SLURM and MUNGE), the README's profile runs the tiny pipeline through it as SLURM jobs, one
fine-tuning job is cancelled mid-run (`scancel`), and the retried job resumes its finished episodes;
the tables and metrics equal a local run's byte for byte. Needs root (or passwordless sudo) and
apt-get where SLURM is missing: skipped, saying why, where neither is there."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_PARAMS, run_snakemake

SLURM_LOCAL = REPO / "scripts" / "slurm-local"
BIN = Path(sys.executable).parent
LOST = "data/runs/tiny/full/k1"  # the run whose job is cancelled mid-run


def why_no_cluster() -> str | None:
    """Why this machine cannot start the one-node cluster, or None."""
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode:
        return "starting SLURM's daemons needs root or passwordless sudo"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    try:
        __import__("snakemake_executor_plugin_slurm")
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = why_no_cluster()
    if why:
        pytest.skip(why)
    proc = subprocess.run([str(SLURM_LOCAL), "up"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    yield
    subprocess.run([str(SLURM_LOCAL), "down"], capture_output=True, text=True, timeout=120)


def snakemake_on_slurm(work: Path, *targets: str, log: Path) -> subprocess.Popen:
    """The README's command (`snakemake --profile workflow/profiles/slurm`), in ``work``."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work)]
    cmd += ["--profile", str(REPO / "workflow" / "profiles" / "slurm"), *targets]
    return subprocess.Popen(
        ["timeout", "-k", "10", "900", *cmd], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def squeue() -> list[list[str]]:
    """[job id, state, comment] of the cluster's jobs; the plugin's comment names rule and wildcards."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return [line.split("|", 2) for line in out.splitlines() if line]


def compared(root: Path) -> dict[str, bytes]:
    """The tables and metrics a run writes (byte for byte)."""
    files = {}
    for p in sorted((root / "reports").rglob("*")):
        if p.is_file() and (p.suffix in (".md", ".csv", ".tex") or p.name.startswith("metrics")):
            files[str(p.relative_to(root))] = p.read_bytes()
    for p in sorted((root / "data" / "runs").rglob("metrics.json")):
        files[str(p.relative_to(root))] = p.read_bytes()
    return files


@pytest.fixture(scope="module")
def slurm_run(cluster, tiny_run, tmp_path_factory):
    """The tiny pipeline run as SLURM jobs."""
    work = tmp_path_factory.mktemp("slurm")
    (work / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    log = work.parent / "snakemake.log"
    code = snakemake_on_slurm(work, log=log).wait(timeout=900)
    assert code == 0, log.read_text()[-4000:]
    return work


@pytest.mark.slow
def test_the_slurm_profile_runs_the_pipeline_to_a_local_runs_tables_and_metrics(slurm_run, tiny_run):
    slurm, local = compared(slurm_run), compared(tiny_run)
    assert sorted(slurm) == sorted(local) and len(slurm) > 10
    assert [name for name in slurm if slurm[name] != local[name]] == []


@pytest.mark.slow
def test_a_fine_tuning_job_cancelled_mid_run_is_retried_and_resumes_its_finished_episodes(
    slurm_run, tiny_run, tmp_path
):
    """Longer fine-tuning (seconds per episode) so the job can be caught between its episodes:
    cancelled once its first episode is saved, resubmitted by the profile's retry, it keeps that
    episode and ends with the metrics of an uninterrupted local run."""
    params = {**TINY_PARAMS, "finetune": {**TINY_PARAMS["finetune"], "steps": 1500, "eval_every": 500}}
    work, local = tmp_path / "slurm", tmp_path / "local"
    for root in (work, local):
        shutil.copytree(slurm_run if root == work else tiny_run, root, symlinks=True)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.rmtree(work / LOST / "episodes")  # the earlier run's resume files (other inputs)
    log = tmp_path / "snakemake.log"
    proc = snakemake_on_slurm(work, f"{LOST}/metrics.json", log=log)
    first = work / LOST / "episodes" / "ep000.json"
    kept = None
    deadline = time.monotonic() + 600
    while kept is None and proc.poll() is None and time.monotonic() < deadline:
        if first.exists():
            for job, state, comment in squeue():
                if comment == "rule_finetune_wildcards_data_tiny_full_1" and state == "RUNNING":
                    subprocess.run(["scancel", job], check=True, timeout=30)
                    kept = first.stat().st_mtime_ns, first.read_bytes()
        time.sleep(0.05)
    assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert kept is not None, "the fine-tuning job ended before it could be cancelled"
    assert "CANCELLED" in text, text[-4000:]  # the plugin saw the lost job; the retry ran it again
    assert (first.stat().st_mtime_ns, first.read_bytes()) == kept  # not recomputed
    assert "resumed 1 of 2 episodes" in (work / "data/logs/finetune/tiny_full_k1.log").read_text()
    run_snakemake(local, f"{LOST}/metrics.json", quiet=False)
    assert (work / LOST / "metrics.json").read_bytes() == (local / LOST / "metrics.json").read_bytes()


@pytest.mark.slow
def test_an_unknown_partition_is_named_and_nothing_is_written(cluster, tmp_path):
    """The README's troubleshooting line: SLURM's own message reaches the console and the run fails
    before any output exists. (Stopped daemons give `Unable to contact slurm controller` the same
    way, checked by hand: the wait for the controller makes it a minute's test.)"""
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    target = "data/raw/digits"
    log = tmp_path / "partition.log"
    code = snakemake_on_slurm(work, target, "--default-resources", "slurm_partition=nope", log=log).wait(300)
    assert code != 0 and "invalid partition specified" in log.read_text(), log.read_text()[-3000:]
    assert not (work / target).exists()
