"""The analysis notebook runs headless on pipeline outputs and says what they contain."""

import json

import nbformat
import pytest

from kshot.errors import DataError
from kshot.io import write_json
from kshot.notebook import execute_notebook, inject_parameters
from kshot.regime import write_comparisons
from kshot.report import write_group_figures, write_results, write_search_report
from tests.conftest import REPO, make_images
from tests.test_report import search_traces, write_runs, write_source, write_target

TEMPLATE = REPO / "reports" / "analysis.ipynb"


def test_parameters_are_injected_after_the_tagged_cell():
    nb = nbformat.read(TEMPLATE, as_version=4)
    tagged = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    inject_parameters(nb, {"ROOT": "/x"})
    assert nb.cells[tagged + 1].source.endswith("ROOT = '/x'\n")
    # the same parameters give the same notebook, byte for byte (no random cell id)
    again = nbformat.read(TEMPLATE, as_version=4)
    inject_parameters(again, {"ROOT": "/x"})
    assert nbformat.writes(nb) == nbformat.writes(again)


def test_notebook_executes_on_pipeline_outputs_and_reports_their_numbers(tmp_path, tiny_model):
    runs = write_runs(tmp_path)
    ckpt, src = write_source(tmp_path, tiny_model)
    rep = tmp_path / "reports"
    write_results(runs, [src], rep / "tables", rep / "figures", "full", rep / "metrics.json", rep / "plots")
    # another study's run beside them (as another params file could leave in data/runs/): not in this report
    extra = write_runs(tmp_path, benches=("b1",), ks=(1,))[0]
    other = json.loads(extra.read_text())
    for ep in other["episodes"]:
        ep["method"] = "full_long"
    write_json(tmp_path / "data" / "runs" / "b1" / "full_long" / "k1" / "metrics.json", other)
    write_source(tmp_path, tiny_model, name="src_wide")  # and that study's source network
    write_group_figures(
        ckpt,
        write_target(tmp_path, "b1", make_images(10, 3)[0]),
        "b1",
        rep / "figures" / "groups",
        n_images=20,
    )
    for s, t in search_traces().items():
        write_json(tmp_path / f"{s}.json", t)
    write_search_report(
        [tmp_path / "reinforce.json", tmp_path / "random.json"],
        ["b1 k=1"] * 2,
        rep / "tables",
        rep / "figures",
    )

    out = tmp_path / "analysis.executed.ipynb"
    execute_notebook(TEMPLATE, out, {"ROOT": str(tmp_path)}, cwd=tmp_path, out_html=tmp_path / "a.html")
    nb = nbformat.read(out, as_version=4)
    text = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.outputs])
    assert "3 methods" in text and "b1, k=1" in text and "full_long" not in text
    assert "src" in text and "src_wide" not in text
    assert f"{len(runs) * 4} fine-tuning runs in all" in text
    assert "best mean `better`" in text
    assert "No search ran" not in text and "reinforce" in text
    assert (tmp_path / "a.html").stat().st_size > 10_000
    # no execution timestamps: a re-run on the same outputs writes the same bytes (DVC sees no change)
    assert not [c for c in nb.cells if "execution" in c.metadata]
    html = (tmp_path / "a.html").read_text()
    assert "def project_root" not in html and "best mean" in html  # results without the code

    # as Jupyter or `jupyter nbconvert --execute` run it: in reports/, no parameter given
    write_comparisons(runs, [("better", "full")], rep / "tables" / "ablation", "ablation",
                      figure=rep / "figures" / "ablation_forest")  # fmt: skip
    execute_notebook(TEMPLATE, tmp_path / "again.ipynb", {}, cwd=rep)
    again = nbformat.read(tmp_path / "again.ipynb", as_version=4)
    cells = {c.source.split("\n")[0]: c for c in again.cells if c.cell_type == "code"}
    assert "3 methods" in json.dumps(cells[next(k for k in cells if k.startswith("import json"))].outputs)
    curves = cells["curves = []"]
    assert any("image/png" in o.get("data", {}) for o in curves.outputs), "the training curves are not shown"
    shown = json.dumps(cells["shown = 0"].outputs, ensure_ascii=False)
    assert "better − full" in shown and shown.count("image/png") == 1


def test_a_missing_output_fails_naming_the_notebook(tmp_path):
    with pytest.raises(DataError, match="a cell failed"):
        execute_notebook(TEMPLATE, tmp_path / "o.ipynb", {"ROOT": str(tmp_path)}, cwd=tmp_path)
    assert not (tmp_path / "o.ipynb").exists()
