"""A real SLURM cluster: `scripts/slurm-local up` starts a one-node cluster on this machine (Debian's
SLURM and MUNGE), the README's profile runs the tiny pipeline through it as SLURM jobs, one
fine-tuning job is cancelled mid-run (`scancel`), and the retried job resumes its finished episodes;
the tables and metrics equal a local run's byte for byte. The cluster's runs start in the background
as the session's tests are collected (:class:`Background`), so their waits on SLURM overlap the
other tests. Needs root (or passwordless sudo) and apt-get where SLURM is missing: skipped, saying
why, where neither is there."""

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_PARAMS, run_snakemake

SLURM_LOCAL = REPO / "scripts" / "slurm-local"
BIN = Path(sys.executable).parent
LOST = "data/runs/tiny/full/k1"  # the run whose job is cancelled mid-run
# fine-tuning long enough (seconds per episode) for its job to be cancelled between episodes
LONG_PARAMS = {**TINY_PARAMS, "finetune": {**TINY_PARAMS["finetune"], "steps": 1500, "eval_every": 500}}


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


@dataclass
class Cancelled:
    """What the cancellation scenario saw: its run's folder and log, the first episode's file
    (mtime, bytes) when its job was cancelled (None: it ended first), and why it failed, or None."""

    work: Path
    log: Path
    kept: tuple[int, bytes] | None = None
    failure: str | None = None


class Background:
    """The cluster's start and its run of the tiny pipeline, then the cancellation scenario, begun in
    a thread when the session's tests are collected (``conftest.pytest_collection_finish`` calls
    :func:`start_in_background`). They spend most of their six minutes waiting for SLURM (each job's
    start, the plugin's status polls that back off by ten seconds), not on the CPU, so they overlap
    the tests before this module's instead of adding to the suite's time; the tests then check what
    they left. ``up_failure``: why the cluster did not start, ``failure``: why it or the pipeline's
    run failed (each None where nothing did)."""

    def __init__(self, root: Path):
        self.root, self.work, self.log = root, root / "slurm", root / "snakemake.log"
        self.up_failure: str | None = None
        self.failure: str | None = None
        self.cancelled: Cancelled | None = None
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._up_and_run, name="slurm-run", daemon=True)
        self.thread.start()

    def _up_and_run(self) -> None:
        try:
            proc = subprocess.run([str(SLURM_LOCAL), "up"], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                self.up_failure = self.failure = f"scripts/slurm-local up failed: {proc.stderr}"
                return
            self.work.mkdir()
            (self.work / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
            self.proc = snakemake_on_slurm(self.work, log=self.log)
            code = self.proc.wait(timeout=900)
            if code != 0:
                self.failure = f"the run on SLURM exited {code}:\n{self.log.read_text()[-4000:]}"
                return
        except Exception as err:  # reported by the fixtures that wait for it
            self.failure = f"{type(err).__name__}: {err}"
            return
        self.cancelled = Cancelled(self.root / "cancelled", self.root / "cancelled.log")
        try:
            self.cancel_and_resume(self.cancelled)
        except Exception as err:
            self.cancelled.failure = f"{type(err).__name__}: {err}"

    def cancel_and_resume(self, out: Cancelled) -> None:
        """A copy of the pipeline's run, with longer fine-tuning (:data:`LONG_PARAMS`), reruns the
        run :data:`LOST`; its job is cancelled (``scancel``) once its first episode is saved, and
        the profile's retry runs it again."""
        shutil.copytree(self.work, out.work, symlinks=True)
        (out.work / "params.yaml").write_text(yaml.safe_dump(LONG_PARAMS))
        shutil.rmtree(out.work / LOST / "episodes")  # the earlier run's resume files (other inputs)
        self.proc = proc = snakemake_on_slurm(out.work, f"{LOST}/metrics.json", log=out.log)
        first = out.work / LOST / "episodes" / "ep000.json"
        deadline = time.monotonic() + 600
        while out.kept is None and proc.poll() is None and time.monotonic() < deadline:
            if first.exists():
                for job, state, comment in squeue():
                    if comment == "rule_finetune_wildcards_data_tiny_full_1" and state == "RUNNING":
                        subprocess.run(["scancel", job], check=True, timeout=30)
                        out.kept = first.stat().st_mtime_ns, first.read_bytes()
            time.sleep(0.05)
        code = proc.wait(timeout=900)
        if code != 0:
            out.failure = f"the cancelled run on SLURM exited {code}:\n{out.log.read_text()[-4000:]}"


BACKGROUND: list[Background] = []  # the session's one background start, where there is one


def start_in_background(root: Path) -> None:
    """Start the cluster and its run (:class:`Background`) in ``root``, once, where the machine can
    (:func:`why_no_cluster`)."""
    if not BACKGROUND and why_no_cluster() is None:
        BACKGROUND.append(Background(root))


def stop_background() -> None:
    """At the session's end: stop a background run still going (a session cut short before this
    module's tests) and the cluster with it; nothing where none was started."""
    for started in BACKGROUND:
        if started.thread.is_alive() and started.proc is not None:
            started.proc.terminate()
        started.thread.join(timeout=60)
        subprocess.run([str(SLURM_LOCAL), "down"], capture_output=True, text=True, timeout=120)
    BACKGROUND.clear()


def background() -> Background:
    """The background start, waited for; a skip where the machine cannot start a cluster."""
    why = why_no_cluster()
    if why:
        pytest.skip(why)
    assert BACKGROUND, "expected conftest.pytest_collection_finish to have started the cluster's runs"
    started = BACKGROUND[0]
    started.thread.join(timeout=2400)
    assert not started.thread.is_alive(), "the background SLURM runs did not end within 2,400 s"
    return started


@pytest.fixture(scope="module")
def cluster():
    started = background()
    assert started.up_failure is None, started.up_failure
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
def slurm_run(cluster):
    """The tiny pipeline run as SLURM jobs (started in the background: :class:`Background`)."""
    started = background()
    assert started.failure is None, started.failure
    return started.work


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
    episode and ends with the metrics of an uninterrupted local run. (The SLURM part ran in the
    background after the pipeline's run: :meth:`Background.cancel_and_resume`.)"""
    cancelled = BACKGROUND[0].cancelled
    assert cancelled is not None and cancelled.failure is None, cancelled and cancelled.failure
    work, first = cancelled.work, cancelled.work / LOST / "episodes" / "ep000.json"
    text = cancelled.log.read_text()
    assert cancelled.kept is not None, "the fine-tuning job ended before it could be cancelled"
    assert "CANCELLED" in text, text[-4000:]  # the plugin saw the lost job; the retry ran it again
    assert (first.stat().st_mtime_ns, first.read_bytes()) == cancelled.kept  # not recomputed
    assert "resumed 1 of 2 episodes" in (work / "data/logs/finetune/tiny_full_k1.log").read_text()
    local = tmp_path / "local"
    shutil.copytree(tiny_run, local, symlinks=True)
    (local / "params.yaml").write_text(yaml.safe_dump(LONG_PARAMS))
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
