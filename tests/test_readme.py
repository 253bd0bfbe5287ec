"""The README's headline table: rendered from the committed reports/metrics_by_cell.json, never typed."""

import json

import pytest

from kshot.cli import main
from kshot.errors import DataError
from kshot.tables import (
    HEADLINE_BEGIN,
    HEADLINE_END,
    PEERS_BEGIN,
    PEERS_END,
    RESNET_BEGIN,
    RESNET_END,
    RESNET_PEERS_BEGIN,
    RESNET_PEERS_END,
    headline_markdown,
    peers_markdown,
    study_markdown,
    with_headline,
    with_peers,
    with_study,
)
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
    metrics = json.loads((REPO / "reports" / "metrics_by_cell.json").read_text())
    assert with_headline(text, metrics, "README.md") == text, (
        "README.md's headline table differs from reports/metrics_by_cell.json: run `kshot readme`"
    )


def test_readme_peers_block_is_the_rendering_of_the_committed_peers_metrics():
    text = (REPO / "README.md").read_text()
    metrics = json.loads((REPO / "reports" / "peers" / "metrics_by_cell.json").read_text())
    assert with_peers(text, metrics, "README.md") == text, (
        "README.md's peers block differs from reports/peers/metrics_by_cell.json: run "
        "`kshot readme --peers-metrics reports/peers/metrics_by_cell.json`"
    )


@pytest.mark.parametrize("study", ["resnet", "resnet_peers"])
def test_readme_resnet_study_blocks_are_the_rendering_of_the_committed_metrics(study):
    text = (REPO / "README.md").read_text()
    path = f"reports/{study}/metrics_by_cell.json"
    metrics = json.loads((REPO / path).read_text())
    assert with_study(text, metrics, "README.md", study) == text, (
        f"README.md's {study} block differs from {path}: run "
        f"`kshot readme --{study.replace('_', '-')}-metrics {path}`"
    )


def test_peers_block_has_the_tuned_findings_first_and_each_baselines_counts():
    counts = {"grouped": {"above": {}, "below": {"b": [10]}}}
    tuned = {
        "diff_vs_full+tuned": {"b": {"k2": {"l2sp+tuned": 2.0}}},
        "significant_vs_full+tuned": {"l2sp+tuned": {"above": {"b": [2]}, "below": {}}},
    }
    metrics = {**TINY, "significant_vs_full": counts, **tuned}
    text = peers_markdown(metrics)
    assert text.index("tuned methods") < text.index("methods as written")
    assert "`l2sp+tuned` significantly above `full+tuned` in most cells" in text
    assert "`grouped` +0.75 pp (below in b k=10)" in text and "3 episodes per cell" in text
    with pytest.raises(DataError, match="peers metrics: expected a diff_vs_<baseline>"):
        peers_markdown({"test_acc": {}, "n_episodes": 1})


def test_the_resnet_block_opens_with_the_source_accuracy_and_replaces_only_its_markers():
    metrics = {**TINY, "significant_vs_full": {"grouped": {"above": {}, "below": {}}}}
    metrics["source_test_acc"] = {"fashion04_resnet": 93.2}
    text = study_markdown(metrics, "resnet")
    assert text.startswith("**The ResNet-18 study**: source networks' test accuracy on their own task: ")
    assert (
        "`fashion04_resnet` 93.2%" in text and "(`snakemake resnet`; written by `kshot readme` from" in text
    )
    readme = f"a\n{PEERS_BEGIN}\npeers\n{PEERS_END}\n{RESNET_BEGIN}\nold\n{RESNET_END}\nb\n"
    new = with_study(readme, metrics, "README.md", "resnet")
    assert new == f"a\n{PEERS_BEGIN}\npeers\n{PEERS_END}\n{RESNET_BEGIN}\n{text}{RESNET_END}\nb\n"


def test_the_peers_on_resnet_block_leaves_the_source_to_the_resnet_block_and_has_a_flag_of_its_own(tmp_path):
    metrics = {**TINY, "significant_vs_full": {"grouped": {"above": {}, "below": {}}}}
    metrics["source_test_acc"] = {"fashion04_resnet": 93.2}
    text = study_markdown(metrics, "resnet_peers")
    assert text.startswith("**The peers on ResNet-18, methods as written** (`snakemake resnet_peers`; ")
    assert "source networks' test accuracy" not in text  # the ResNet-18 study's block says it
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    readme = tmp_path / "README.md"
    readme.write_text(f"{HEADLINE_BEGIN}\n{HEADLINE_END}\n{RESNET_PEERS_BEGIN}\nold\n{RESNET_PEERS_END}\n")
    args = ["readme", "--metrics", str(path), "--resnet-peers-metrics", str(path), "--readme", str(readme)]
    assert main(args) == 0
    assert readme.read_text().endswith(f"{RESNET_PEERS_BEGIN}\n{text}{RESNET_PEERS_END}\n")


def test_headline_has_one_row_per_benchmark_and_k_with_signed_differences_to_the_baseline():
    lines = headline_markdown(TINY).splitlines()
    assert lines[0] == "| benchmark | k | full (%) | grouped − full | l2sp − full |"
    assert lines[2] == "| b | 2 | 60.0 | +1.50 | n/a |"  # k in numeric order, a null as n/a
    assert lines[3] == "| b | 10 | 80.0 | 0.00 | +0.45 |"  # neither -0.00 nor +0.00
    assert "over 3 evaluation episodes" in lines[-1] and "reports/tables/results.md" in lines[-1]


def test_findings_say_whether_a_method_is_significantly_ahead_in_most_cells_and_rank_the_methods():
    from kshot.tables import findings_markdown

    assert findings_markdown(TINY, "full") == ""  # metrics written before the counts existed
    counts = {"grouped": {"above": {"b": [2]}, "below": {}}, "l2sp": {"above": {}, "below": {"b": [10]}}}
    text = findings_markdown({**TINY, "significant_vs_full": counts}, "full")
    assert "no method is significantly above `full` in most of the 2 cells" in text
    # best mean first; where, by benchmark and k
    assert text.index("`grouped` +0.75 pp (above in b k=2)") < text.index("`l2sp` +0.45 pp (below in b k=10)")
    # grouped in 2 cells, l2sp in 1: 3 comparisons, 2 significant, 3 x 5% = 0.15 by chance (shown 0.2)
    assert text.endswith(
        "2 of the 3 per-cell comparisons are significant; about 0.2 would be by chance alone "
        "(each interval at 95%, uncorrected).\n"
    )
    two = {"b": [2, 10], "c": [1]}
    assert "`grouped` +0.75 pp (above in b k=2, 10 and c k=1; below in b k=5)" in findings_markdown(
        {**TINY, "significant_vs_full": {"grouped": {"above": two, "below": {"b": [5]}}}}, "full"
    )
    assert "(in no cell)" in findings_markdown(
        {**TINY, "significant_vs_full": {"grouped": {"above": {}, "below": {}}}}, "full"
    )
    ahead = {**counts, "grouped": {"above": {"b": [2, 10]}, "below": {}}}
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
    readme.write_text(f"{HEADLINE_BEGIN}\n{HEADLINE_END}\n{PEERS_BEGIN}\nold\n{PEERS_END}\n")
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({**TINY, "significant_vs_full": {"grouped": {"above": {}, "below": {}}}}))
    args = ["readme", "--metrics", str(metrics), "--peers-metrics", str(peers), "--readme", str(readme)]
    assert main(args) == 0
    assert readme.read_text().endswith(
        f"{PEERS_BEGIN}\n{peers_markdown(json.loads(peers.read_text()))}{PEERS_END}\n"
    )
    readme.write_text("# no markers\n")
    assert main(["readme", "--metrics", str(metrics), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(readme) in err and HEADLINE_BEGIN in err
    assert readme.read_text() == "# no markers\n"


def test_the_studies_block_has_one_line_per_study_in_order_and_refuses_an_unknown_study():
    from kshot.tables import STUDIES_BEGIN, STUDIES_END, findings_paragraph, with_findings

    readme = f"a\n{STUDIES_BEGIN}\nold\n{STUDIES_END}\nb\n"
    new = with_findings(
        readme,
        {
            "maps": ("- **x**: m.\n", "reports/maps/findings.md"),
            "sources": ("- **t**: s.\n- **u**: v.\n", "f.md"),
        },
        "README.md",
    )
    lines = new.splitlines()
    assert lines[2].startswith(
        "- **The source-effect study** (`snakemake source_effect`; written by `kshot readme`"
    )
    assert lines[2].endswith("`f.md`): **t**: s. **u**: v.")
    assert lines[3].startswith("- **The activation-maps study**") and lines[4] == STUDIES_END
    with pytest.raises(
        DataError,
        match=r"^--findings: expected a study of \['alignment', 'maps', 'regime', 'replicates', "
        r"'resnet_replicates', 'sources'\]",
    ):
        findings_paragraph("source", "- a\n", "f.md")
    with pytest.raises(DataError, match=r"^f.md: expected the study's findings, found an empty file"):
        findings_paragraph("maps", "\n", "f.md")


def test_readme_studies_block_is_the_rendering_of_the_committed_findings():
    from kshot.tables import FINDINGS, with_findings

    text = (REPO / "README.md").read_text()
    findings = {}
    for study in FINDINGS:  # a study not run yet (no committed findings) has no line
        path = REPO / "reports" / study / "findings.md"
        if path.exists():
            findings[study] = (path.read_text(), f"reports/{study}/findings.md")
    assert {"replicates", "resnet_replicates", "regime", "sources", "alignment", "maps"} <= set(findings)
    assert with_findings(text, findings, "README.md") == text, (
        "README.md's studies block differs from reports/<study>/findings.md: run `kshot readme "
        "--findings replicates=reports/replicates/findings.md "
        "resnet_replicates=reports/resnet_replicates/findings.md regime=reports/regime/findings.md "
        "sources=reports/sources/findings.md alignment=reports/alignment/findings.md "
        "maps=reports/maps/findings.md`"
    )
