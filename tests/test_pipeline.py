"""End to end: the real Snakefile on a tiny config (digits only, so it runs offline anywhere)."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from kshot.jobs import COMMANDS, job_params
from kshot.params import load_params
from tests.conftest import REPO, TINY_PARAMS, run_snakemake


@pytest.fixture(scope="module")
def pipeline_dir(tiny_run):
    return tiny_run


@pytest.mark.slow
def test_pipeline_writes_the_results_table_with_every_method(pipeline_dir):
    table = pd.read_csv(pipeline_dir / "reports" / "tables" / "results.csv")
    assert set(table.method) == set(TINY_PARAMS["run"]["methods"]) and len(set(table.method)) == 8
    assert (table.n_episodes == 2).all()
    assert table.test_acc.between(0, 100).all()
    md = (pipeline_dir / "reports" / "tables" / "results.md").read_text()
    assert "### tiny" in md and "Source pre-training" in md
    assert "Target classes: digits 5, 6, 7, 8, 9." in md
    assert (pipeline_dir / "reports" / "figures" / "accuracy_vs_k.png").stat().st_size > 1000
    # two blocks: the tuned methods against full+tuned, the untuned ones against full
    assert md.index("every method tuned") < md.index("options as written")
    blocks = dict(zip(table.method, table.baseline, strict=True))
    assert blocks["grouped_rl"] == blocks["centroid"] == "full+tuned" and blocks["l2sp"] == "full"


@pytest.mark.slow
def test_the_tuned_run_runs_the_options_its_tune_stage_chose(pipeline_dir):
    import json

    trace = json.loads((pipeline_dir / "data/tune/tiny/full/k1.json").read_text())
    assert trace["method"] == "full" and [t["candidate"] for t in trace["trials"][:2]] == [
        {"lr": 0.01},
        {"lr": 0.1},
    ]
    assert trace["chosen"] in [t["candidate"] for t in trace["trials"] if t["select_reward"] is not None]
    run = json.loads((pipeline_dir / "data/runs/tiny/full+tuned/k1/metrics.json").read_text())
    assert {e["method"] for e in run["episodes"]} == {"full+tuned"}


@pytest.mark.slow
def test_search_runs_both_strategies_within_budget_and_feeds_grouped_rl(pipeline_dir):
    import json

    traces = {
        s: json.loads((pipeline_dir / f"data/search/tiny/k1/{s}.json").read_text())
        for s in ("reinforce", "random")
    }
    for trace in traces.values():
        evaluated = [s for s in trace["samples"] if not s["cached"]]
        assert 1 <= len(evaluated) <= 3
        assert len(trace["finalists"]) == 2 and trace["finalists"][0]["ungrouped"]
        assert trace["chosen_counts"] in [f["counts"] for f in trace["finalists"]]
    rl = json.loads((pipeline_dir / "data/runs/tiny/grouped_rl/k1/metrics.json").read_text())
    assert rl["episodes"][0]["extra"]["counts"] == traces["reinforce"]["chosen_counts"]


@pytest.mark.slow
def test_activation_and_group_stages_feed_the_grouped_runs(pipeline_dir):
    import json

    assert (pipeline_dir / "data/activations/tiny/k1/support.pt").stat().st_size > 1000
    for method in ("grouped", "grouped_random", "grouped_rl"):
        summary = json.loads((pipeline_dir / f"data/groups/tiny/{method}/k1.json").read_text())
        run = json.loads((pipeline_dir / f"data/runs/tiny/{method}/k1/metrics.json").read_text())
        assert [summary["episodes"][str(e["episode"])] for e in run["episodes"]] == [
            e["extra"] if method != "grouped_rl" else {k: v for k, v in e["extra"].items() if k != "search"}
            for e in run["episodes"]
        ]
        assert set(summary["mean_quality"]) == {"conv1", "conv2", "fc1"}


def planned_outputs(workdir: Path, *extra: str) -> list[str]:
    """The output paths of every job a dry run of ``extra`` plans."""
    proc = run_snakemake(workdir, "-n", *extra, quiet=False)
    return [
        path.strip()
        for line in proc.stdout.splitlines()
        if line.strip().startswith("output:")
        for path in line.split(":", 1)[1].split(",")
    ]


@pytest.mark.slow
def test_the_snakemake_report_has_every_section_filled_and_each_item_displayable(pipeline_dir, tmp_path):
    """scripts/check_report.py on the tiny run's report: sections numbered apart, each non-empty,
    every item with a caption and a data URL a browser opens; in headless Chromium when installed.
    A report whose two sections share a number, or one with an empty section, fails it."""
    sys.path.insert(0, str(REPO / "scripts"))
    import check_report

    report = tmp_path / "report.html"
    run_snakemake(pipeline_dir, "--report", str(report))
    summary, failures, html_items, _ = check_report.check_items(report.read_text())
    assert failures == [] and summary["items"] > 5 and html_items
    assert any(cat.startswith("1. ") for cat in summary["sections"])
    if check_report.chromium() is not None:  # Debian's chromium: apt-get install chromium
        shot = tmp_path / "report.png"
        assert check_report.main([str(report), "--screenshot", str(shot)]) == 0
        assert shot.stat().st_size > 10_000
    text = report.read_text()
    first, second = sorted(summary["sections"])[:2]
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(f'"{second}"', f'"{first.split(". ")[0]}. {second.split(". ", 1)[1]}"'))
    assert any("distinct numbers" in f for f in check_report.check_items(broken.read_text())[1])
    broken.write_text(re.sub(r'"data_uri": "data:[^"]*"', '"data_uri": ""', text, count=1))
    assert any("expected an embedded file" in f for f in check_report.check_items(broken.read_text())[1])
    assert check_report.main([str(broken), "--no-browser"]) == 1
    # two items whose second label differs: Snakemake makes it a toggle and the section breaks
    assert check_report.toggle_label([{"shows": "a", "table": "x"}, {"shows": "b", "figure": "y"}]) is None
    assert (
        check_report.toggle_label([{"figure": "x", "shows": "a"}, {"figure": "y", "shows": "b"}]) == "shows"
    )


@pytest.mark.slow
def test_second_run_has_nothing_to_do(pipeline_dir):
    proc = run_snakemake(pipeline_dir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_regime_study_writes_its_own_files_apart_from_the_default_runs(pipeline_dir, tmp_path):
    """The regime's jobs that the default run does not make write under data/regime/ and
    reports/regime/, outside the DVC stages' outputs; the runs both use are not made again."""
    from tests.conftest import TINY_PARAMS, with_regime_only_runs

    work = tmp_path / "copy"
    shutil.copytree(pipeline_dir, work, symlinks=True)
    params = with_regime_only_runs(copy.deepcopy(TINY_PARAMS))
    _shapes(params, tmp_path, run=False)  # an image-folder dataset that only the regime reads
    params["regime"] = {
        "runs": [
            {"benchmarks": ["tiny", "tiny_wide"], "methods": ["full", "grouped", "full_long"]},
            {"benchmarks": ["tiny_shapes"], "methods": ["full"]},
        ],
        "pairs": [["grouped", "full"], ["full_long", "full"]],
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    planned = planned_outputs(work, "regime")
    assert "data/regime/checkpoints/digits04_wide/source.pt" in planned
    assert "data/regime/runs/tiny/full_long/k1/metrics.json" in planned
    assert "data/regime/runs/tiny_wide/grouped/k1/metrics.json" in planned
    assert "data/regime/raw/shapes" in planned
    assert "reports/regime/regime.md" in planned
    outside = [p for p in planned if not p.startswith(("data/regime/", "reports/regime/"))]
    assert not outside, f"regime jobs writing into the default run's folders: {outside}"
    # what the default run already made is read from data/, not made again under data/regime/
    shared = ("/runs/tiny/full/", "/runs/tiny/grouped/", "/checkpoints/digits04/", "/episodes/tiny/")
    again = [p for p in planned if any(s in p for s in shared)]
    assert not again, f"the regime redoes the default run's jobs: {again}"


def shapes_folder(root: Path) -> Path:
    """An image-folder dataset of two classes, four images each."""
    folder = root / "shapes"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (16, 16), 60 * i).save(folder / c / f"{i}.png")
    return folder


def _shapes(params: dict, root: Path, run: bool) -> None:
    params["data"]["image_folders"] = {"shapes": str(shapes_folder(root))}
    params["benchmarks"]["tiny_shapes"] = {"source": "digits04", "target": "shapes", "target_classes": [0, 1]}
    if run:
        params["run"]["benchmarks"].append("tiny_shapes")


def _set(params: dict, path: str, value) -> None:
    *head, last = path.split(".")
    node = params
    for key in head:
        node = node[key]
    node[last] = value


EDITS = {
    # edit -> (change the params, the finished outputs of data/ that must be made again)
    "auto-device-on-a-cpu-machine": (lambda p, root: _set(p, "device", "auto"), set()),
    "a-dataset-and-benchmark-not-run": (lambda p, root: _shapes(p, root, run=False), set()),
    "a-dataset-and-benchmark-run": (lambda p, root: _shapes(p, root, run=True), set()),
    "another-k": (lambda p, root: _set(p, "episodes.k", [1, 2]), set()),
    "one-method-fewer": (lambda p, root: p["run"]["methods"].remove("linear"), set()),
    "a-method-more": (
        lambda p, root: (
            p["methods"].update(full_long={"kind": "full", "steps": 8}),
            p["run"]["methods"].append("full_long"),
        ),
        set(),
    ),
    "a-search-option-the-default-strategy": (lambda p, root: _set(p, "search.strategy", "random"), set()),
    "the-fine-tuning-lr": (
        lambda p, root: _set(p, "finetune.lr", 0.02),
        # every gradient method, the search and the tuning read it; the centroid classifier does not
        {
            f"data/runs/tiny/{m}/k1/metrics.json"
            for m in ("full", "full+tuned", "linear", "l2sp", "grouped", "grouped_random", "grouped_rl")
        }
        | {f"data/search/tiny/k1/{s}.json" for s in ("reinforce", "random")}
        | {"data/tune/tiny/full/k1.json"}
        | {f"data/groups/tiny/grouped_rl/k1.{e}" for e in ("pt", "json")},
    ),
    "a-tune-grid": (
        lambda p, root: _set(p, "methods.full.tune", {"lr": [0.01, 0.05]}),
        # the grid is the tune stage's: full as written does not rerun
        {"data/tune/tiny/full/k1.json", "data/runs/tiny/full+tuned/k1/metrics.json"},
    ),
    "one-methods-groups": (
        lambda p, root: _set(p, "methods.grouped.groups", 0.25),
        {
            "data/runs/tiny/grouped/k1/metrics.json",
            "data/groups/tiny/grouped/k1.pt",
            "data/groups/tiny/grouped/k1.json",
        },
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_reruns_exactly_the_jobs_that_read_what_changed(pipeline_dir, tmp_path, edit):
    """Each job's rerun fingerprint is what it reads: adding a dataset, benchmark, k or method,
    dropping one, or writing the device that `auto` resolves to plans no finished job again; a
    changed value plans exactly the jobs that read it (and the reports after them)."""
    from tests.conftest import TINY_PARAMS

    work = tmp_path / "copy"
    shutil.copytree(pipeline_dir, work, symlinks=True)
    finished = {
        str(p.relative_to(work)) for p in (work / "data").rglob("*") if p.is_file() or p.name in ("digits",)
    }
    params = copy.deepcopy(TINY_PARAMS)
    change, expected = EDITS[edit]
    change(params, tmp_path)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    planned = set(planned_outputs(work))
    again = {p for p in planned if p in finished and p.startswith("data/")}
    assert again == expected


def _data_files(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "data").rglob("*") if p.is_file()}


BREAKS = {
    # a value the DAG can judge -> the one-line error the console shows before any job runs
    "test-per-class-too-large": ("episodes.test_per_class", 500, "episodes.test_per_class: expected at most"),
    "val-per-class-too-large": ("episodes.val_per_class", 400, "episodes.val_per_class"),
    "cuda-without-a-gpu": ("device", "cuda", "device: expected a CUDA GPU for 'cuda', found none"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BREAKS))
def test_a_broken_value_stops_the_run_before_any_job_and_fixing_it_leaves_nothing_to_do(
    pipeline_dir, tmp_path, name
):
    import torch

    from tests.conftest import TINY_PARAMS

    field, value, message = BREAKS[name]
    if name == "cuda-without-a-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    work = tmp_path / "copy"
    shutil.copytree(pipeline_dir, work, symlinks=True)
    before = _data_files(work)
    params = copy.deepcopy(TINY_PARAMS)
    _set(params, field, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_snakemake(work, check=False, quiet=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert _data_files(work) == before  # nothing deleted, nothing rewritten
    (work / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    assert "Nothing to be done" in run_snakemake(work, "-n").stdout


@pytest.mark.slow
def test_a_job_time_error_shows_its_one_line_on_the_console_and_loses_no_finished_file(
    pipeline_dir, tmp_path
):
    """A corrupt image can only be found by reading it, in the acquisition job: the console shows
    kshot's line (not just "check log file(s)"), and the finished files are as they were."""
    from tests.conftest import TINY_PARAMS

    work = tmp_path / "copy"
    shutil.copytree(pipeline_dir, work, symlinks=True)
    before = _data_files(work)
    params = copy.deepcopy(TINY_PARAMS)
    _shapes(params, tmp_path, run=True)
    bad = tmp_path / "shapes" / "a" / "broken.png"
    bad.write_bytes(b"not a png")
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_snakemake(work, check=False, quiet=False)
    assert proc.returncode != 0
    assert f"kshot acquire: error: image file '{bad}': expected a readable image" in proc.stderr
    after = _data_files(work)
    assert {p: t for p, t in after.items() if p in before} == before
    assert not (work / "data/raw/shapes").exists()  # and nothing half-written


@pytest.mark.slow
def test_replicate_study_runs_new_sources_apart_and_tabulates_each_and_across(pipeline_dir, tmp_path):
    """The replicate study pre-trains the source again per seed and runs the methods on new
    episodes, under data/regime/; the default run is the replicate of its own seed and is not
    redone; the table has a row per seed and one across them."""
    from tests.conftest import TINY_PARAMS

    work = tmp_path / "copy"
    shutil.copytree(pipeline_dir, work, symlinks=True)
    params = copy.deepcopy(TINY_PARAMS)
    params["replicates"] = {
        "seeds": [3],
        "benchmarks": ["tiny"],
        "methods": ["full", "grouped"],
        "pairs": [["grouped", "full"]],
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    planned = planned_outputs(work, "replicates")
    assert "data/regime/checkpoints/digits04_seed3/source.pt" in planned
    assert "data/regime/runs/tiny_seed3/grouped/k1/metrics.json" in planned
    outside = [p for p in planned if not p.startswith(("data/regime/", "reports/replicates/"))]
    assert not outside, f"replicate jobs writing into the default run's folders: {outside}"
    # the ResNet-18 replicate study is the same machinery under a block and target of its own
    params["resnet_replicates"] = {**params["replicates"], "seeds": [4]}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    planned = planned_outputs(work, "resnet_replicates")
    assert "data/regime/checkpoints/digits04_seed4/source.pt" in planned
    assert "reports/resnet_replicates/findings.md" in planned
    assert not [p for p in planned if "seed3" in p or p.startswith("reports/replicates/")]
    outside = [p for p in planned if not p.startswith(("data/regime/", "reports/resnet_replicates/"))]
    assert not outside, f"replicate jobs writing into the default run's folders: {outside}"
    run_snakemake(work, "replicates", quiet=False)
    source = json.loads((work / "data/regime/checkpoints/digits04_seed3/metrics.json").read_text())
    assert source["source"] == "digits04_seed3"
    table = (work / "reports/replicates/replicates.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| grouped")]
    assert rows == [
        "grouped − full, source seed 0",
        "grouped − full, source seed 3",
        "grouped − full, across sources",
    ]
    csv = pd.read_csv(work / "reports/replicates/replicates.csv")
    assert sorted(csv.seed.dropna().astype(int)) == [0, 3] and csv.seed.isna().sum() == 1
    again = run_snakemake(work, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_bad_param_stops_before_any_job_with_a_named_field(tmp_path):
    from tests.conftest import TINY_PARAMS

    bad = {**TINY_PARAMS, "run": {"benchmarks": ["tiny"], "methods": ["ful"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    proc = run_snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "run.methods[0]: unknown value 'ful' (did you mean 'full'?)" in out
    assert len(out.splitlines()) < 40, out  # kshot's one line, not the JSON schema's dump
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("data/runs/tiny/fulll/k1/metrics.json", "methods: unknown value 'fulll' (did you mean 'full'?)"),
        ("data/runs/tinny/full/k1/metrics.json", "benchmarks: unknown value 'tinny' (did you mean 'tiny'?)"),
        (
            "data/groups/tiny/full/k1.pt",
            "methods.full.kind: groups and activations are made for grouped kinds",
        ),
    ],
    ids=["unknown-method", "unknown-benchmark", "groups-of-an-ungrouped-method"],
)
def test_target_naming_what_the_params_lack_is_refused_by_name(tmp_path, target, message):
    from tests.conftest import TINY_PARAMS

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    proc = run_snakemake(tmp_path, "-n", target, check=False, quiet=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_pretraining_takes_its_threads_from_the_recipe_whatever_the_cores(tmp_path):
    """``--cores`` must not change any number: the pre-training's thread count (which decides its
    float rounding on CPU) is ``sources.<name>.threads``, and its command passes none."""
    from tests.conftest import TINY_PARAMS

    raw = copy.deepcopy(TINY_PARAMS)
    raw["sources"]["digits04"]["threads"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    target = "data/checkpoints/digits04/source.pt"
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "8", target, quiet=False)
    job = proc.stdout[proc.stdout.index("rule pretrain:") :]
    assert re.search(r"^\s+threads: 3$", job, flags=re.M), job[:800]
    command = job[job.index("python -m kshot pretrain") :].splitlines()[0]
    assert "--threads" not in command, command


@pytest.mark.parametrize("name", ["gpu", "slurm-gpu"])
def test_gpu_profiles_give_a_gpu_to_every_rule_that_runs_torch_on_the_device(name):
    """The one-machine profile shares its one GPU among several jobs; on SLURM each such job asks for one
    (`sbatch --gpus=1`), and the CPU profile asks none."""
    profile = yaml.safe_load((REPO / "workflow/profiles" / name / "config.yaml").read_text())
    cpu = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert "gpu" not in str(cpu)
    slot = {"gpu_slots": 1} if name == "gpu" else {"gpu": 1}
    if name == "gpu":
        assert profile["resources"]["gpu_slots"] > 1, "several small jobs share the one GPU"
    else:
        assert {k: v for k, v in profile.items() if k != "set-resources"} == cpu
    # the jobs whose params carry the device (kshot.jobs), by rule name
    params = load_params(REPO / "params.yaml")
    keys = {"dataset": "digits", "source": "fashion04", "benchmark": "fashion", "method": "full", "k": 1}
    on_device = {
        command.replace("-", "_")
        for command in COMMANDS
        if "device" in job_params(params, command, "cpu", strategy="random", **keys)
    }
    assert on_device >= {"pretrain", "activations", "search", "finetune"}, on_device
    assert {r for r, res in profile["set-resources"].items() if res == slot} == on_device


def test_invalid_yaml_stops_snakemake_with_the_file_line_and_column(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 0\nfinetune:\n  lr: [0.1\n  steps: 3\n")
    proc = run_snakemake(tmp_path, "-n", check=False, quiet=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "params file 'params.yaml': expected valid YAML, found a syntax error at line 4, column 8" in out
    assert "is not valid JSON or YAML" not in out
    assert not (tmp_path / "data").exists()


def test_snakemake_run_without_activating_the_environment_runs_kshot_with_its_python(tmp_path):
    """The rules call kshot through the interpreter that runs Snakemake, not a bare `python`."""
    from tests.conftest import TINY_PARAMS

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}  # no venv on PATH
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--cores", "1", "data/raw/digits"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "data/raw/digits/manifest.json").is_file()
