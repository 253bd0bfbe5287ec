"""The GPU check script runs its sections on CPU (`--device cpu`), as it is tried before a GPU run."""

import json
import subprocess
import sys

import yaml

from tests.conftest import REPO, TINY_PARAMS


def test_the_gpu_check_runs_each_section_on_cpu_and_writes_its_json_as_it_goes(tmp_path):
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump(TINY_PARAMS))
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--device", "cpu", "--out", str(out)]
    cmd += ["--params", str(params), "--targets", "stage_pretrain", "--sections", "env", "default", "search"]
    cmd += ["--members", "2", "--repeats", "1", "--train-steps", "4", "--cores", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    sections = result["sections"]
    assert sections["env"]["torch"] and sections["env"]["gpu"] is None
    default = sections["default"]
    assert default["exit_code"] == 0 and not default["stopped_at_limit"]
    assert default["jobs"] >= 3 and "pretrain" in default["rules"]
    rows = sections["search"]["rows"]
    assert {row["members"] for row in rows} == {2} and all(
        row["population_evals_per_min"] > 0 and row["speedup"] > 0 for row in rows
    )
    log = (out / "progress.log").read_text()
    assert "snakemake stage_pretrain" in log and "gpu_check: done" in log
