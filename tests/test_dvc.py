"""`dvc repro` on the tiny config: dvc.yaml's stages run the Snakemake phases in order, record every
output in dvc.lock, and a second call has nothing to do; the regime study run after it leaves
`dvc status` clean."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_PARAMS, with_regime_only_runs

# what dvc.yaml's stages name as commands' inputs or dependencies
COPIED = [
    ".dvcignore",
    "Snakefile",
    "dvc.yaml",
    "environment.yml",
    "kshot",
    "workflow",
    "reports/analysis.ipynb",
]


BIN = Path(sys.executable).parent  # the environment's dvc and snakemake


def run(workdir: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )


def dvc(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = run(workdir, "dvc", *args)
    if proc.returncode != 0:
        logs = "\n".join(p.read_text()[-1500:] for p in (workdir / "data" / "logs").rglob("*.log"))
        pytest.fail(f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}")
    return proc


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """The tiny project after `dvc init` and a first `dvc repro`."""
    if shutil.which("dvc", path=str(BIN)) is None:
        pytest.skip("dvc is not installed in this environment")
    tmp_path = tmp_path_factory.mktemp("dvc")
    for name in COPIED:
        src, dst = REPO / name, tmp_path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(src, dst)
    params = with_regime_only_runs(copy.deepcopy(TINY_PARAMS))
    params["ablation"] = [["grouped", "full"], ["grouped_rl", "full"]]
    params["regime"] = {
        "runs": [{"benchmarks": ["tiny", "tiny_wide"], "methods": ["full", "full_long"]}],
        "pairs": [["full_long", "full"]],
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(tmp_path, "init", "--no-scm", "-q")
    dvc(tmp_path, "repro")
    return tmp_path


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_has_nothing_to_do_and_the_regime_leaves_it_so(dvc_project, tmp_path):
    tmp_path = tmp_path / "work"
    shutil.copytree(dvc_project, tmp_path, symlinks=True)

    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"data", "pretrain", "activations", "finetune", "report"}
    outs = {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    assert {"data/runs", "data/search", "data/groups", "data/checkpoints", "reports/tables"} <= outs
    assert (tmp_path / "reports/tables/results.md").read_text().count("grouped_rl") >= 1
    assert (tmp_path / "reports/tables/ablation.md").exists()
    assert "up to date" in dvc(tmp_path, "status").stdout
    again = dvc(tmp_path, "repro")
    assert "didn't change, skipping" in again.stdout + again.stderr
    assert "Running stage" not in again.stdout + again.stderr

    # the regime study, as the README runs it, writes beside DVC's outputs, not into them
    proc = run(tmp_path, "snakemake", "regime", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "reports/regime/regime.md").exists()
    assert (tmp_path / "data/regime/runs/tiny_wide/full_long/k1/metrics.json").exists()
    assert "up to date" in dvc(tmp_path, "status").stdout


def assert_agree(workdir: Path) -> None:
    """Snakemake has nothing to do and DVC finds every stage up to date."""
    proc = run(workdir, "snakemake", "-n", "--cores", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert "up to date" in dvc(workdir, "status").stdout


def in_git(workdir: Path) -> set[str]:
    """The outputs dvc.yaml leaves to git (its metrics, cache: false)."""
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]
    return {
        next(iter(m)) if isinstance(m, dict) else m for s in stages.values() for m in s.get("metrics", [])
    }


def dvc_outs(workdir: Path) -> list[str]:
    """The outputs DVC keeps in its cache."""
    lock = yaml.safe_load((workdir / "dvc.lock").read_text())
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    return [p for p in outs if p not in in_git(workdir)]


@pytest.mark.slow
def test_after_dvc_checkout_a_fresh_dvc_pull_or_an_older_commit_snakemake_agrees_with_dvc(
    dvc_project, tmp_path
):
    work = tmp_path / "work"
    shutil.copytree(dvc_project, work, symlinks=True)
    dvc(work, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    dvc(work, "push", "-q")

    # the outputs gone, then restored from the cache: new times, in any order
    for out in dvc_outs(work):
        shutil.rmtree(work / out) if (work / out).is_dir() else (work / out).unlink()
    dvc(work, "checkout", "-q")
    assert_agree(work)

    # a fresh clone: the project's files and dvc.lock, no data and no .snakemake, then `dvc pull`
    clone = tmp_path / "clone"
    for name in [*COPIED, "params.yaml", "dvc.lock", *in_git(work)]:
        src, dst = work / name, clone / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    shutil.copytree(work / ".dvc", clone / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    dvc(clone, "pull", "-q")
    assert_agree(clone)

    # an older commit: run a changed value, then restore the earlier params.yaml, dvc.lock and
    # metrics (what `git checkout` does) and their outputs (`dvc checkout`)
    before = {name: (work / name).read_text() for name in ("params.yaml", "dvc.lock", *in_git(work))}
    params = yaml.safe_load(before["params.yaml"])
    params["finetune"]["lr"] = 0.02
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(work, "repro")
    assert (work / "dvc.lock").read_text() != before["dvc.lock"]
    for name, text in before.items():
        (work / name).write_text(text)
    dvc(work, "checkout", "-q")
    assert_agree(work)


def test_dvc_plots_name_the_default_runs_benchmarks_and_methods():
    """dvc.yaml's data-series plots are written by hand: they must follow params.yaml's run."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    run_ = yaml.safe_load((REPO / "params.yaml").read_text())["run"]
    series = {
        file: fields
        for plot in spec["plots"]
        if isinstance(plot, dict)
        for props in plot.values()
        for file, fields in props["y"].items()
    }
    assert sorted(series) == [f"reports/plots/accuracy_vs_k/{b}.csv" for b in sorted(run_["benchmarks"])]
    for file, fields in series.items():
        assert fields == run_["methods"], f"dvc.yaml plots {file}: expected run.methods {run_['methods']}"
