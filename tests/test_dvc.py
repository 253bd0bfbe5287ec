"""`dvc repro` on the tiny config: dvc.yaml's stages run the Snakemake phases in order, record every
output in dvc.lock, and a second call has nothing to do; the regime study run after it leaves
`dvc status` clean."""

import contextlib
import copy
import os
import shutil
import socket
import subprocess
import sys
import time
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
    """The outputs dvc.yaml leaves to git (those with cache: false)."""
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]
    return {
        path
        for s in stages.values()
        for o in s.get("metrics", []) + s.get("outs", [])
        if isinstance(o, dict)
        for path, opts in o.items()
        if opts and opts.get("cache") is False
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
    fresh_clone(work, clone)
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


# ---------------------------------------------------------------- an S3 remote (moto's server)

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "kshot",
    "AWS_SECRET_ACCESS_KEY": "kshot-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(**env: str):
    """An S3 API on 127.0.0.1 (moto's server, ``env`` added to its environment) with the bucket
    ``kshot``; yields its URL."""
    server = BIN / "moto_server"
    if not server.exists():
        pytest.skip("moto[server] is not installed in this environment")
    port = free_port()
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **S3_ENV, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="kshot")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_endpoint(monkeypatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with s3_server() as url:
        yield url


def add_s3_remote(workdir: Path, url: str) -> None:
    """The README's commands for an S3 remote (`verify true`: a damaged object is refused)."""
    dvc(workdir, "remote", "add", "-f", "-d", "s3", "s3://kshot/store")
    dvc(workdir, "remote", "modify", "s3", "endpointurl", url)
    dvc(workdir, "remote", "modify", "s3", "verify", "true")


def fresh_clone(work: Path, clone: Path) -> None:
    """What `git clone` gives: the project's files, params, dvc.lock, the git-kept outputs and DVC's
    config; no data, no cache, no .snakemake."""
    for name in [*COPIED, "params.yaml", "dvc.lock", *in_git(work)]:
        src, dst = work / name, clone / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    shutil.copytree(work / ".dvc", clone / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))


def file_bytes(root: Path, outs: list[str]) -> dict[str, bytes]:
    """Every file under ``outs`` that DVC tracks (not .dvcignore's timings and resume files)."""
    files = {}
    for out in outs:
        path = root / out
        for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if p.is_file() and p.name != "timings.json" and "episodes" not in p.relative_to(path).parts:
                files[str(p.relative_to(root))] = p.read_bytes()
    return files


@pytest.mark.slow
def test_an_s3_remote_carries_data_checkpoints_and_tables_byte_exact_and_refuses_a_damaged_object(
    dvc_project, s3_endpoint, tmp_path
):
    import boto3

    work = tmp_path / "work"
    shutil.copytree(dvc_project, work, symlinks=True)
    add_s3_remote(work, s3_endpoint)
    dvc(work, "push", "-q")
    pushed = file_bytes(work, dvc_outs(work))
    assert any(name.endswith("source.pt") for name in pushed) and "reports/tables/results.md" in pushed

    clone = tmp_path / "clone"
    fresh_clone(work, clone)
    dvc(clone, "pull", "-q")
    assert file_bytes(clone, dvc_outs(work)) == pushed  # data, checkpoints and tables, byte for byte
    assert_agree(clone)  # nothing to redo

    # one object damaged on the remote: a pull into a fresh clone fails and writes no bad bytes
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="kshot", Prefix="store/")["Contents"])
    damaged = next(key for key in objects if not key.endswith(".dir"))
    s3.put_object(Bucket="kshot", Key=damaged, Body=b"not what was pushed")
    other = tmp_path / "other"
    fresh_clone(work, other)
    proc = run(other, "dvc", "pull")
    assert proc.returncode != 0
    # DVC discards the object whose hash does not match and names what it could not check out
    assert "Checkout failed for following targets" in proc.stderr, proc.stderr[-2000:]
    assert all(pushed[name] == data for name, data in file_bytes(other, dvc_outs(work)).items())
    assert b"not what was pushed" not in b"".join(file_bytes(other, ["data", "reports"]).values())
    # the clone that pulled before keeps its good copy
    assert file_bytes(clone, dvc_outs(work)) == pushed


@pytest.mark.slow
def test_an_s3_remote_refusing_connections_or_credentials_is_named_and_nothing_local_is_lost(
    dvc_project, tmp_path, monkeypatch
):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "work"
    shutil.copytree(dvc_project, work, symlinks=True)
    before = file_bytes(work, dvc_outs(work))

    def push_fails(url: str, message: str) -> None:
        add_s3_remote(work, url)
        proc = run(work, "dvc", "push")
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr[-2000:]
        assert file_bytes(work, dvc_outs(work)) == before

    push_fails(f"http://127.0.0.1:{free_port()}", "Could not connect to the endpoint URL")  # no server
    # a server that checks credentials (moto: after its first request), and ours are no user's
    with s3_server(INITIAL_NO_AUTH_ACTION_COUNT="1") as url:
        push_fails(url, "Forbidden")
