"""The README's headline table: rendered from the committed reports/metrics.json, never typed."""

import json

import pytest

from kshot.cli import main
from kshot.errors import DataError
from kshot.tables import HEADLINE_BEGIN, HEADLINE_END, headline_markdown, with_headline
from tests.conftest import REPO

TINY = {
    "diff_vs_full": {"b": {"k10": {"grouped": -0.004, "l2sp": 0.449}, "k2": {"grouped": 1.5, "l2sp": None}}},
    "n_episodes": 3,
    "source_test_acc": {"s": 90.0},
    "test_acc": {
        "b": {
            "k10": {"full": 80.04, "grouped": 80.0, "l2sp": 80.5},
            "k2": {"full": 60.0, "grouped": 61.5, "l2sp": None},
        }
    },
}


def test_readme_headline_block_is_the_rendering_of_the_committed_metrics():
    text = (REPO / "README.md").read_text()
    metrics = json.loads((REPO / "reports" / "metrics.json").read_text())
    assert with_headline(text, metrics, "README.md") == text, (
        "README.md's headline table differs from reports/metrics.json: run `kshot readme`"
    )


def test_headline_has_one_row_per_benchmark_and_k_with_signed_differences_to_the_baseline():
    lines = headline_markdown(TINY).splitlines()
    assert lines[0] == "| benchmark | k | full (%) | grouped − full | l2sp − full |"
    assert lines[2] == "| b | 2 | 60.0 | +1.50 | n/a |"  # k in numeric order, a null as n/a
    assert lines[3] == "| b | 10 | 80.0 | 0.00 | +0.45 |"  # neither -0.00 nor +0.00
    assert "over 3 evaluation episodes" in lines[-1] and "reports/tables/results.md" in lines[-1]


def test_findings_say_whether_a_method_is_significantly_ahead_in_most_cells_and_rank_the_methods():
    from kshot.tables import findings_markdown

    assert findings_markdown(TINY, "full") == ""  # metrics written before the counts existed
    counts = {"grouped": {"above": 1, "below": 0}, "l2sp": {"above": 0, "below": 1}}
    text = findings_markdown({**TINY, "significant_vs_full": counts}, "full")
    assert "no method is significantly above `full` in most of the 2 cells" in text
    assert text.index("`grouped` +0.75 pp (1 / 0)") < text.index("`l2sp` +0.45 pp (0 / 1)")  # best mean first
    ahead = {**counts, "grouped": {"above": 2, "below": 0}}
    assert "`grouped` significantly above `full` in most cells" in findings_markdown(
        {**TINY, "significant_vs_full": ahead}, "full"
    )
    assert headline_markdown({**TINY, "significant_vs_full": counts}).endswith(text)


def test_headline_refuses_metrics_without_a_baseline_difference():
    with pytest.raises(DataError, match="diff_vs_<baseline>"):
        headline_markdown({"test_acc": {}, "n_episodes": 1})


def test_readme_command_rewrites_only_the_block_and_names_a_file_without_markers(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(TINY))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{HEADLINE_BEGIN}\nold\n{HEADLINE_END}\n\nafter\n")
    assert main(["readme", "--metrics", str(metrics), "--readme", str(readme)]) == 0
    block = f"{HEADLINE_BEGIN}\n{headline_markdown(TINY)}{HEADLINE_END}"
    assert readme.read_text() == f"# title\n\n{block}\n\nafter\n"
    readme.write_text("# no markers\n")
    assert main(["readme", "--metrics", str(metrics), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(readme) in err and HEADLINE_BEGIN in err
    assert readme.read_text() == "# no markers\n"
