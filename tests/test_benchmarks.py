"""The benchmark helpers: Snakemake log parsing, and benchmarks/README.md's tables rendered from
measurements."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pipeline_time = _module("pipeline_time")
summarise = _module("summarise")

LOG = """\
Building DAG of jobs...
[Tue Nov 24 22:54:20 2026]
localrule acquire:
    output: data/raw/digits
    jobid: 5
[Tue Nov 24 22:54:20 2026]
rule search:
    jobid: 7
    wildcards: root=data, benchmark=fashion, k=1, strategy=random
[Tue Nov 24 22:54:24 2026]
Finished jobid: 5 (Rule: acquire)
[Tue Nov 24 22:54:25 2026]
rule search:
    jobid: 8
[Tue Nov 24 22:55:20 2026]
Finished jobid: 7 (Rule: search)
[Tue Nov 24 22:56:00 2026]
Finished jobid: 8 (Rule: search)
[Tue Nov 24 22:56:00 2026]
localrule all:
    jobid: 0
[Tue Nov 24 22:56:00 2026]
Finished jobid: 0 (Rule: all)
3 of 3 steps (100%) done
Elapsed time: 0:01:41.500000
"""


def test_log_parse_counts_each_jobs_seconds_by_rule_and_the_span():
    d = pipeline_time.parse_log(LOG)
    assert d["jobs"] == 4 and d["unfinished"] == 0
    assert d["rules"]["search"]["jobs"] == 2
    assert d["rules"]["search"]["job_s"] == 60 + 95
    assert d["rules"]["acquire"]["job_s"] == 4
    assert d["job_seconds"] == 159
    assert d["span_s"] == 100
    assert d["snakemake_elapsed_s"] == 101.5
    assert next(iter(d["rules"])) == "search"  # the largest first
    assert sum(r["share"] for r in d["rules"].values()) == pytest.approx(1)


def test_log_parse_counts_each_methods_job_seconds_by_rule():
    log = """\
[Tue Nov 24 22:54:20 2026]
rule finetune:
    jobid: 3
    wildcards: root=data, benchmark=fashion, method=full+tuned, k=1
[Tue Nov 24 22:54:21 2026]
rule tune:
    jobid: 4
    wildcards: root=data, benchmark=fashion, method=full, k=1
[Tue Nov 24 22:54:30 2026]
Finished jobid: 3 (Rule: finetune)
[Tue Nov 24 22:54:41 2026]
Finished jobid: 4 (Rule: tune)
"""
    d = pipeline_time.parse_log(log)
    assert d["methods"]["finetune full+tuned"]["job_s"] == 10
    assert d["methods"]["tune full"]["job_s"] == 20 and next(iter(d["methods"])) == "tune full"
    assert "search random" not in pipeline_time.parse_log(LOG)["methods"]  # no method wildcard


def test_log_parse_counts_a_job_that_never_finished():
    d = pipeline_time.parse_log(LOG.split("[Tue Nov 24 22:56:00 2026]\nFinished jobid: 8")[0])
    assert d["unfinished"] == 1 and d["rules"]["search"]["jobs"] == 1


def test_benchmarks_readme_block_is_rendered_from_the_committed_measurements():
    text = (REPO / "benchmarks" / "README.md").read_text()
    assert summarise.readme_block(text) == summarise.render(), (
        "benchmarks/README.md's benchmark block differs from `python benchmarks/summarise.py`'s "
        "rendering of benchmarks/measured/: run `python benchmarks/summarise.py --update-readme`"
    )


def test_render_reflects_a_changed_measurement(tmp_path):
    for f in summarise.MEASURED.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    pipeline = sorted(tmp_path.glob("pipeline_time*.json"))[-1]
    d = json.loads(pipeline.read_text())
    d["run_s"] += 61
    pipeline.write_text(json.dumps(d))
    assert summarise.render(tmp_path) != summarise.render()


def test_outputs_compare_unequal_when_a_file_is_missing_on_either_side(tmp_path):
    clone, tree = tmp_path / "clone", tmp_path / "tree"
    for root in (clone, tree):
        (root / "reports" / "tables").mkdir(parents=True)
        (root / "reports" / "metrics.json").write_text("{}")
        (root / "reports" / "tables" / "results.md").write_text("| a |")
    assert pipeline_time.same_outputs(clone, tree) is True
    (tree / "reports" / "tables" / "ablation.md").write_text("| b |")
    assert pipeline_time.same_outputs(clone, tree) is False  # missing from the clone
    (clone / "reports" / "tables" / "ablation.md").write_text("| c |")
    assert pipeline_time.same_outputs(clone, tree) is False  # different bytes
    assert pipeline_time.same_outputs(clone, tmp_path / "nothing") is None


def test_a_log_only_measurement_is_not_shown_as_a_run(tmp_path):
    for f in summarise.MEASURED.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    log_only = tmp_path / "pipeline_time_log_only.json"  # beside every committed run, none replaced
    assert not log_only.exists()
    log_only.write_text(json.dumps(pipeline_time.parse_log(LOG)))
    assert summarise.render(tmp_path) == summarise.render()
