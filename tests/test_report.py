"""Report statistics and tables on synthetic pipeline outputs (formats as the pipeline writes them)."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kshot.config import ControllerConfig, SourceConfig
from kshot.errors import DataError
from kshot.files.checkpoint import save_checkpoint
from kshot.io import save_tensors, write_json
from kshot.report import (
    compact_metrics,
    headline_metrics,
    load_runs,
    markdown_table,
    mean_ci,
    summarise,
    target_notes,
    write_results,
    write_search_report,
)
from kshot.search import random_search, run_search
from kshot.tables import (
    Table,
    ablation_table,
    fmt_ci,
    main_tables,
    search_table,
    source_table,
    to_latex,
    trace_curve,
)

# ---------------------------------------------------------------- synthetic pipeline outputs

METHODS = {"full": 0.0, "better": 0.03, "worse": -0.05}


def episode_record(bench: str, method: str, k: int, ep: int) -> dict:
    acc = min(0.99, 0.4 + 0.04 * k + 0.02 * ep + METHODS[method] + 0.003 * (ep % 3))
    return {
        "benchmark": bench,
        "method": method,
        "kind": method,
        "k": k,
        "episode": ep,
        "test_acc": acc,
        "val_acc": acc + 0.01,
        "diverged_step": None,
        "best_step": 4,
        "val_curve": [[2, acc - 0.05], [4, acc]],
    }


def write_runs(root: Path, benches=("b1", "b2"), ks=(1, 5), n_eps: int = 4) -> list[Path]:
    """``data/runs/{bench}/{method}/k{k}/metrics.json`` as the finetune rule writes them."""
    paths = []
    for bench in benches:
        for method in METHODS:
            for k in ks:
                p = root / "data" / "runs" / bench / method / f"k{k}" / "metrics.json"
                eps = [episode_record(bench, method, k, ep) for ep in range(n_eps)]
                write_json(p, {"benchmark": bench, "episodes": eps})
                paths.append(p)
    return paths


def write_source(root: Path, model, name: str = "src") -> tuple[Path, Path]:
    """A checkpoint of ``model`` and its metrics JSON, as the pretrain rule writes them."""
    ckpt = root / "data" / "checkpoints" / name / "source.pt"
    metrics = {
        "source": name,
        "backbone": "lenet",
        "source_test_acc": 0.9,
        "source_train_acc": 0.95,
        "n_params": sum(p.numel() for p in model.parameters()),
        "epochs": [{"epoch": 1, "train_loss": 0.3}],
    }
    save_checkpoint(ckpt, model, SourceConfig(dataset="digits", classes=[0, 1, 2], width=0.5), 28, metrics)
    write_json(ckpt.with_name("metrics.json"), metrics)
    return ckpt, ckpt.with_name("metrics.json")


def write_target(root: Path, bench: str, images: torch.Tensor) -> Path:
    p = root / "data" / "prepared" / "targets" / f"{bench}.pt"
    save_tensors(p, {"pool_x": images, "pool_y": torch.zeros(len(images), dtype=torch.long)})
    return p


def search_traces() -> dict[str, dict]:
    """An RL and a random ``SearchTrace.to_dict()`` on a toy reward that prefers one group in
    conv1 and many in fc1."""
    layers = ["conv1", "conv2", "fc1"]
    menu = {"conv1": [1, 2, 5, 10], "conv2": [2, 6, 12, 25], "fc1": [16, 62, 125, 250]}

    def evaluate(counts: dict[str, int]) -> float:
        return 0.5 + 0.1 / counts["conv1"] + 0.1 * counts["fc1"] / 250 + 0.01 * (counts["conv2"] % 3)

    rl = run_search(evaluate, layers, menu, 10, ControllerConfig(), seed=0)
    rs = random_search(evaluate, layers, menu, 10, seed=0)
    return {"reinforce": rl.to_dict(), "random": rs.to_dict()}


# ---------------------------------------------------------------- statistics


def test_mean_ci_matches_the_t_interval():
    mean, half = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci(np.array([5.0]))[1])


def _runs():
    rows = []
    for ep in range(5):
        rows.append(
            {
                "benchmark": "b",
                "method": "full",
                "k": 1,
                "episode": ep,
                "test_acc": 0.5 + 0.05 * ep,
                "val_acc": 0.5,
                "diverged_step": None,
            }
        )
        rows.append(
            {
                "benchmark": "b",
                "method": "better",
                "k": 1,
                "episode": ep,
                "test_acc": 0.52 + 0.05 * ep + 0.001 * ep,
                "val_acc": 0.5,
                "diverged_step": None,
            }
        )
    return pd.DataFrame(rows)


def test_paired_difference_uses_per_episode_differences():
    s = summarise(_runs(), "full").set_index("method")
    assert s.loc["better", "diff_vs_baseline"] == pytest.approx(2.2)
    assert s.loc["better", "significant"]
    assert s.loc["full", "ci95"] > 5  # unpaired spread is large, the paired one small
    assert s.loc["better", "diff_ci95"] < 1


def test_markdown_table_marks_the_best_mean_and_significant_differences():
    md = markdown_table(summarise(_runs(), "full"), "full")
    assert "| better | **62.2 ± 10.0** |" in md
    assert "2.2 ± 0.2 *" in md
    assert "uncorrected for the table's many comparisons" in md  # a * is one interval's verdict


def test_every_comparison_tables_note_says_its_intervals_are_uncorrected(tmp_path):
    from kshot.regime import NOTES
    from kshot.tables import replicates_table

    df = load_runs(write_runs(tmp_path))
    notes = [ablation_table(df, [("better", "worse")]).note, *NOTES.values()]  # the pipeline's notes
    notes.append(replicates_table(df, [("better", "worse")], {"b1": ("b1", 0), "b2": ("b2", 0)}).note)
    assert all("about 1 in 20 excludes 0 by chance" in note for note in notes)


def test_runs_of_a_cell_on_other_episodes_or_twice_are_refused(tmp_path):
    paths = write_runs(tmp_path, benches=("b1",), ks=(1,), n_eps=3)
    short = json.loads(paths[1].read_text())
    write_json(paths[1], {**short, "episodes": short["episodes"][:2]})  # a run cut short
    with pytest.raises(
        DataError,
        match=r"^runs of .* at b1 k=1: expected the episodes .* ran \(\[0, 1, 2\]\), found \[0, 1\]$",
    ):
        load_runs(paths)
    with pytest.raises(
        DataError, match=r"^runs of .* at b1 k=1: expected one result per episode, found episode 0 twice$"
    ):
        load_runs([*paths, paths[0]])


def test_zero_differences_print_without_a_sign():
    assert fmt_ci(-0.04, 0.5, signed=True) == "0.0 ± 0.5"
    assert fmt_ci(0.26, 0.5, signed=True) == "+0.3 ± 0.5"
    assert fmt_ci(1.0, math.nan) == "1.0"


def test_summary_of_runs_has_the_paired_gain_of_a_consistently_better_method(tmp_path):
    df = load_runs(write_runs(tmp_path))
    s = summarise(df, "full").set_index(["benchmark", "k", "method"])
    assert s.loc[("b1", 1, "better"), "diff_vs_baseline"] == pytest.approx(3.0)
    assert s.loc[("b1", 1, "better"), "significant"]
    assert s.loc[("b1", 1, "worse"), "diff_vs_baseline"] == pytest.approx(-5.0)
    assert math.isnan(s.loc[("b1", 1, "full"), "diff_vs_baseline"])


# ---------------------------------------------------------------- tables


def test_main_table_bolds_ties_at_printed_precision_and_lists_the_baseline_first():
    df = _runs()
    df2 = df[df.method == "full"].assign(method="same")
    summary = summarise(pd.concat([df, df2]), "full")
    (t,) = main_tables(summary, "full")
    assert [r[0] for r in t.cells] == ["full", "better", "same"]
    best_col = [row[1] for row in t.bold]
    assert best_col == [False, True, False]
    assert t.cells[0][2] == "—"


def test_main_table_caption_names_the_target_classes_by_label_and_name(tmp_path):
    summary = summarise(_runs(), "full")
    notes = target_notes({"b": {"dataset": "fashion_mnist", "classes": [9, 5], "raw": str(tmp_path)}})
    assert notes == {"b": "fashion_mnist 9 Ankle boot, 5 Sandal"}
    (t,) = main_tables(summary, "full", targets=notes)
    assert t.note.endswith("Target classes: fashion_mnist 9 Ankle boot, 5 Sandal.")
    digits = target_notes({"b": {"dataset": "digits", "classes": [5, 6], "raw": str(tmp_path)}})
    assert digits == {"b": "digits 5, 6"}  # a label that is its own name is not repeated
    with pytest.raises(
        DataError, match=r"--targets: expected dataset, classes and raw for 'b', missing \['raw'\]"
    ):
        target_notes({"b": {"dataset": "digits", "classes": [5]}})


def test_html_table_renders_groups_bold_cells_and_code_and_escapes_the_rest():
    from kshot.tables import html_page, to_html

    (t,) = main_tables(summarise(_runs().replace({"method": {"better": "a<b"}}), "full"), "full")
    section = to_html(t)
    assert f'<th colspan="{t.groups[0][1]}">accuracy (%)</th>' in section  # the spanning header
    assert section.count("<tr>") == 2 + len(t.cells)  # the group row, the header, a row per method
    assert "a&lt;b" in section and "a<b" not in section
    assert "<strong>" in section and "<code>full</code>" in section
    page = html_page([t], t.title)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page


def test_latex_table_escapes_names_and_spans_the_two_column_groups():
    summary = summarise(_runs().replace({"method": {"better": "l2_sp"}}), "full")
    tex = to_latex(main_tables(summary, "full")[0], "tab:x")
    assert r"l2\_sp" in tex and r"$\pm$" in tex and r"\label{tab:x}" in tex
    assert r"\multicolumn{1}{c}{accuracy (\%)}" in tex
    assert tex.count(r"\\") == 2 + 2  # two header rows, two method rows
    assert r"\textbf{62.2 $\pm$ 10.0}" in tex


def test_latex_is_plain_ascii_and_sets_code_spans_in_texttt():
    # pdflatex stops on a Unicode minus or times sign; the captions quote names in Markdown code spans
    t = Table(
        title="Each row a − b (×2)",
        note="`grouped_rl` against `full`; Δ ± —",
        columns=["method", "a − b"],
        cells=[["grouped_rl − full", "+1.3 ± 1.0 *"]],
        bold=[[False, False]],
    )
    tex = to_latex(t)
    assert tex.isascii(), sorted({c for c in tex if not c.isascii()})
    assert r"\texttt{grouped\_rl} against \texttt{full}" in tex and "`" not in tex
    assert r"a $-$ b ($\times$2)" in tex and r"grouped\_rl $-$ full & +1.3 $\pm$ 1.0 *" in tex


def _wide_table(ncol: int, name: str = "bench") -> Table:
    return Table(
        title="wide",
        note="",
        columns=["comparison"] + [f"{name}_{i} k=1" for i in range(ncol - 1)],
        cells=[["grouped_rl − full"] + ["+1.3 ± 1.0 *"] * (ncol - 1)],
        bold=[[False] * ncol],
    )


def test_latex_tabular_is_scaled_down_to_the_line_only_where_it_is_wider():
    tex = to_latex(_wide_table(3))
    fit = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"
    assert tex.index(fit) < tex.index(r"\begin{tabular}") and r"\end{tabular}}" in tex
    assert tex.count("{") == tex.count("}")


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="pdflatex is not installed")
def test_every_table_compiles_with_pdflatex_within_the_page(tmp_path):
    summary = summarise(_runs(), "full")
    tables = [*main_tables(summary, "full"), _wide_table(7, "fashion_to_digits"), _wide_table(13)]
    body = "\n".join(to_latex(t, f"tab:{i}") for i, t in enumerate(tables))
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
        "\\usepackage{graphicx}\n\\begin{document}\n" + body + "\\end{document}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert done.returncode == 0, log[-2000:]
    assert "Overfull \\hbox" not in log, [line for line in log.splitlines() if "Overfull" in line]


def test_source_table_reports_percent_and_rejects_a_file_without_accuracy():
    t = source_table([{"source": "s", "backbone": "lenet", "source_test_acc": 0.9264, "n_params": 1000}])
    assert t.cells[0][-2] == "92.6" and t.cells[0][2] == "1,000"
    assert t.cells[0][-1] == ""  # a checkpoint from before the numerics record
    numerics = {"torch": "2.14.1", "device": "cpu", "threads": 2, "cpu_capability": "AVX512", "cpu": "x"}
    t = source_table([{"source": "s", "backbone": "lenet", "source_test_acc": 0.9, "numerics": numerics}])
    assert t.cells[0][-1] == "cpu AVX512, 2 threads, torch 2.14.1"
    assert t.data.computed_on[0] == t.cells[0][-1]
    with pytest.raises(DataError, match="source_test_acc"):
        source_table([{"source": "s", "backbone": "lenet"}])


def test_search_table_shows_chosen_counts_of_neurons_and_the_random_control():
    traces = search_traces()
    t = search_table({("b1", 5, s): tr for s, tr in traces.items()})
    assert t.columns[2:5] == ["conv1", "conv2", "fc1"]
    rl = t.data.set_index("strategy").loc["reinforce"]
    assert rl.groups_conv1 == traces["reinforce"]["best_counts"]["conv1"]
    assert rl.best_reward == pytest.approx(100 * traces["reinforce"]["best_reward"])
    assert t.cells[0][2].endswith("/10")  # groups / neurons of conv1
    assert set(t.data.strategy) == {"reinforce", "random"}
    assert (t.data.evaluations <= t.data.budget).all()


def test_search_table_reports_the_selection_stage_and_marks_an_ungrouped_choice():
    traces = search_traces()
    sizes = {"conv1": 10, "conv2": 25, "fc1": 250}

    def select(trace: dict, plain: float, grouped: float) -> None:
        """Give ``trace`` a selection stage: the ungrouped and the search's best configuration."""
        trace["finalists"] = [
            {"counts": sizes, "search_reward": None, "select_reward": plain, "ungrouped": True},
            {"counts": trace["best_counts"], "search_reward": trace["best_reward"], "select_reward": grouped}
            | {"ungrouped": False},
        ]
        trace["chosen_counts"] = trace["best_counts"] if grouped > plain else sizes

    select(traces["reinforce"], plain=0.70, grouped=0.75)  # a grouped finalist wins
    select(traces["random"], plain=0.80, grouped=0.60)  # the ungrouped configuration wins
    t = search_table({("b1", 5, s): tr for s, tr in traces.items()})
    data = t.data.set_index("strategy")
    assert data.loc["reinforce"].chosen_select_reward == pytest.approx(75.0)
    assert data.loc["reinforce"].ungrouped_select_reward == pytest.approx(70.0)
    assert not data.loc["reinforce"].chosen_ungrouped
    assert data.loc["random"].chosen_ungrouped and data.loc["random"].groups_fc1 == 250
    random_row = next(row for row in t.cells if row[1] == "random")
    assert "80.0 (ungrouped)" in random_row and random_row[2:5] == ["10/10", "25/25", "250/250"]


def test_trace_curve_counts_evaluations_without_cached_samples_and_never_decreases():
    tr = search_traces()["reinforce"]
    c = trace_curve(tr)
    assert c.evaluations.iloc[-1] == tr["n_evaluations"]
    assert (c.best_so_far.diff().dropna() >= 0).all()
    assert c.best_so_far.iloc[-1] == pytest.approx(tr["best_reward"])


def test_ablation_table_gives_the_paired_difference_of_each_pair(tmp_path):
    df = load_runs(write_runs(tmp_path))
    t = ablation_table(df, [("better", "worse"), ("better", "missing")])
    row = t.data[(t.data.benchmark == "b1") & (t.data.k == 1)].iloc[0]
    assert row["diff"] == pytest.approx(8.0)
    assert t.cells[1][1:] == ["", "", "", ""]  # a method that never ran: blank, no error


def test_headline_metrics_are_json_ready_numbers(tmp_path):
    df = load_runs(write_runs(tmp_path))
    m = headline_metrics(summarise(df, "full"), [{"source": "s", "source_test_acc": 0.9}], "full")
    json.dumps(m, allow_nan=False)
    assert m["diff_vs_full"]["b1"]["k1"]["better"] == pytest.approx(3.0)
    assert "full" not in m["diff_vs_full"]["b1"]["k1"]
    assert m["source_test_acc"] == {"s": 90.0}
    # where each difference is significant, by benchmark and k (the fixture's 'better' always wins)
    sig = m["significant_vs_full"]
    assert sig["better"]["above"] and not sig["better"]["below"]
    assert all(ks == sorted(ks) for ks in sig["better"]["above"].values())
    compact = compact_metrics(m)
    assert set(compact) == {"source_test_acc", "vs_full"}
    cells = [c["better"] for c in (v for b in m["diff_vs_full"].values() for v in b.values())]
    assert compact["vs_full"]["better"] == pytest.approx(sum(cells) / len(cells), abs=0.005)


def test_write_results_writes_every_table_format_metrics_and_plot_data(tmp_path, tiny_model):
    runs = write_runs(tmp_path)
    _, src = write_source(tmp_path, tiny_model)
    rep = tmp_path / "reports"
    summary = write_results(
        runs, [src], rep / "tables", rep / "figures", "full", rep / "metrics.json", rep / "plots"
    )
    for name in ("results.md", "results.html", "results.csv", "results.tex", "sources.csv"):
        assert (rep / "tables" / name).stat().st_size > 100
    assert "### Source pre-training" in (rep / "tables" / "results.md").read_text()
    assert pd.read_csv(rep / "tables" / "results.csv").shape[0] == len(summary) == 12
    wide = pd.read_csv(rep / "plots" / "accuracy_vs_k" / "b1.csv")
    assert list(wide.columns) == ["k", "better", "full", "worse"]
    paired = pd.read_csv(rep / "plots" / "paired" / "b1.csv")
    assert list(paired.columns[:3]) == ["k", "episode", "full"] and len(paired) == 8
    for stem in ("accuracy_vs_k", "episode_differences", "forest"):
        assert (rep / "figures" / f"{stem}.png").stat().st_size > 10_000
    compact = json.loads((rep / "metrics.json").read_text())  # what `dvc metrics show` prints
    assert compact == compact_metrics(json.loads((rep / "metrics_by_cell.json").read_text()))


def test_write_search_report_rejects_two_traces_of_one_strategy_for_one_search(tmp_path):
    tr = search_traces()["random"]
    write_json(tmp_path / "a.json", tr)
    with pytest.raises(DataError, match="second 'random'"):
        write_search_report([tmp_path / "a.json"] * 2, ["b k=1"] * 2, tmp_path, tmp_path)
    write_search_report([tmp_path / "a.json"], ["b k=1"], tmp_path / "t", tmp_path / "f")
    assert "random" in (tmp_path / "t" / "search.md").read_text()
    assert np.isfinite(pd.read_csv(tmp_path / "t" / "search.csv").best_reward).all()


def test_comparison_findings_name_the_cells_where_a_pair_is_significant_each_way():
    from kshot.regime import comparison_findings

    data = pd.DataFrame(
        [
            {"a": "g", "b": "f", "benchmark": "b", "k": 1, "diff": 2.0, "ci95": 1.0},
            {"a": "g", "b": "f", "benchmark": "b", "k": 5, "diff": 3.0, "ci95": 1.0},
            {"a": "g", "b": "f", "benchmark": "c", "k": 1, "diff": -2.0, "ci95": 1.0},
            {"a": "g", "b": "f", "benchmark": "c", "k": 5, "diff": 0.5, "ci95": 1.0},
            {"a": "h", "b": "f", "benchmark": "b", "k": 1, "diff": 0.5, "ci95": float("nan")},
        ]
    )
    assert comparison_findings(data, "regime") == (
        "Mean paired difference over the cells (benchmark x k) and the cells where its 95% interval "
        "excludes 0.\n"
        "- `g − f` +0.88 pp over 4 cells (above in b k=1, 5; below in c k=1).\n"
        "- `h − f` +0.50 pp over 1 cell (in no cell).\n\n"
        "3 of the 4 per-cell comparisons are significant; about 0.2 would be by chance alone "
        "(each interval at 95%, uncorrected).\n"
    )
    # benchmarks of two backbones: each backbone's mean and cells apart; one backbone: as above
    split = comparison_findings(data, "regime", {"b": "lenet", "c": "resnet18"})
    assert split.splitlines()[1:-2] == [
        "- `g − f` on lenet +2.50 pp over 2 cells (above in b k=1, 5); "
        "on resnet18 -0.75 pp over 2 cells (below in c k=1).",
        "- `h − f` +0.50 pp over 1 cell (in no cell).",
    ]
    assert comparison_findings(data, "regime", {"b": "lenet", "c": "lenet"}) == comparison_findings(
        data, "regime"
    )


def test_replicates_table_gives_each_source_seed_and_the_interval_across_them():
    from kshot.tables import replicates_table

    rows = []
    # grouped − full per episode: seed 0 +1 pp everywhere, seed 1 +3 pp, seed 2 −1 pp (3 episodes)
    for bench, gain in (("b", 0.01), ("b_seed1", 0.03), ("b_seed2", -0.01)):
        for ep, base in enumerate((0.5, 0.6, 0.7)):
            jitter = 0.001 * ep
            rows.append({"benchmark": bench, "method": "full", "k": 1, "episode": ep, "test_acc": base})
            rows.append(
                {
                    "benchmark": bench,
                    "method": "grouped",
                    "k": 1,
                    "episode": ep,
                    "test_acc": base + gain + jitter,
                }
            )
    df = pd.DataFrame(rows)
    of = {"b": ("b", 0), "b_seed1": ("b", 1), "b_seed2": ("b", 2)}
    t = replicates_table(df, [("grouped", "full")], of)
    assert t.columns == ["comparison", "b k=1"]
    assert [r[0] for r in t.cells] == [
        "grouped − full, source seed 0",
        "grouped − full, source seed 1",
        "grouped − full, source seed 2",
        "grouped − full, across sources",
    ]
    assert t.cells[0][1].startswith("+1.1 ±") and t.cells[0][1].endswith("*")
    across = t.data[t.data.seed.isna()].iloc[0]
    assert across.n == 3 and across["diff"] == pytest.approx((1.1 + 3.1 + -0.9) / 3)
    assert "(2↑ 1↓)" in t.cells[3][1] and not t.cells[3][1].split(" (")[0].endswith("*")
    with pytest.raises(DataError, match="missing \\['b_seed2'\\]"):
        replicates_table(df, [("grouped", "full")], {"b": ("b", 0), "b_seed1": ("b", 1)})
    from kshot.regime import comparison_findings

    text = comparison_findings(t.data, "replicates")
    assert text == (
        "Mean paired difference over the cells (benchmark x k), the cells where the 95% interval over "
        "the 3 source networks' means excludes 0, and how many (source, cell) pairs are significant on "
        "their own episodes.\n"
        "- `grouped − full` +1.10 pp over 1 cell (in no cell; per source: 2 of 3 above, 1 below).\n\n"
        "0 of the 1 per-cell comparisons are significant; about 0.1 would be by chance alone "
        "(each interval at 95%, uncorrected).\n"
    )
    from kshot.regime import forest_rows

    rows = forest_rows(t.data)
    assert rows.row.tolist() == [
        "grouped − full, source seed 0, k=1",
        "grouped − full, source seed 1, k=1",
        "grouped − full, source seed 2, k=1",
        "grouped − full, across sources, k=1",
    ]
    assert set(rows.series) == {"grouped − full"} and set(rows.panel) == {"b"}
    assert rows.significant.tolist() == [True, True, True, False]


def test_compare_draws_the_forest_plot_of_its_pairs(tmp_path):
    from kshot.cli import main

    runs = [str(p) for p in write_runs(tmp_path)]
    stem, figure = tmp_path / "tables" / "ablation", tmp_path / "figures" / "ablation_forest"
    argv = ["compare", "--kind", "ablation", "--runs", *runs, "--out-stem", str(stem)]
    assert main([*argv, "--pairs", "better:full", "worse:full", "--figure", str(figure)]) == 0
    assert figure.with_suffix(".png").stat().st_size > 10_000
    svg = figure.with_suffix(".svg").read_text()
    assert "better − full, k=1" in svg and "worse − full, k=5" in svg
