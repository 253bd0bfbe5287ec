"""Figures: written as PNG and SVG, with their axis labels, from synthetic pipeline outputs."""

import pandas as pd
import pytest
import torch

from kshot.errors import DataError
from kshot.figures import (
    group_order,
    method_styles,
    plot_filter_groups,
    plot_group_counts,
    plot_neuron_embedding,
    plot_search_curves,
)
from kshot.report import load_runs, write_group_figures
from kshot.tables import chosen_counts
from tests.conftest import make_images
from tests.test_report import search_traces, write_runs, write_source, write_target


def _svg_text(path):
    return path.with_suffix(".svg").read_text()


def test_method_styles_keep_a_method_colour_whatever_else_ran():
    a = method_styles(["full", "l2sp", "linear"], "full")
    b = method_styles(["linear", "full", "l2sp"], "full")
    assert a == b
    assert a["full"]["linestyle"] == "--" and a["l2sp"]["linestyle"] == "-"
    assert len({s["color"] for s in a.values()}) == 3


def test_group_order_puts_each_group_together_largest_first():
    perm, spans = group_order(torch.tensor([0, 1, 1, 2, 1, 0]))
    assert [g for g, _, _ in spans] == [1, 0, 2]
    assert perm[:3].tolist() == [1, 2, 4]
    assert [s for _, s, _ in spans] == [0, 3, 5]


def test_filter_grid_and_embedding_are_written_with_labels(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(12, 1, 5, 5)
    assign = torch.tensor([0, 1, 2] * 4)
    paths = plot_filter_groups(w, assign, tmp_path / "f", "filters", notes={0: "r = 0.50"})
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert "group 0" in _svg_text(tmp_path / "f") and "r = 0.50" in _svg_text(tmp_path / "f")
    plot_neuron_embedding(torch.randn(12, 30), assign, tmp_path / "e", "emb")
    assert "PC 1 (" in _svg_text(tmp_path / "e")
    with pytest.raises(DataError, match="N = 5"):
        plot_filter_groups(w, torch.zeros(5, dtype=torch.long), tmp_path / "x", "bad")


def test_search_figures_show_rl_against_random_per_search(tmp_path):
    traces = search_traces()
    plot_search_curves({"b k=1": traces, "b k=5": traces}, tmp_path / "c")
    svg = _svg_text(tmp_path / "c")
    assert "reinforce (best so far)" in svg and "random (best so far)" in svg
    assert "validation reward (accuracy, %)" in svg
    plot_group_counts({f"b k=1 {s}": t for s, t in traces.items()}, tmp_path / "g")
    svg = _svg_text(tmp_path / "g")
    assert "groups / neurons (log scale)" in svg
    for strategy, trace in traces.items():  # a row per search, each chosen count written G/N
        assert f"b k=1 {strategy}" in svg
        for layer, count in chosen_counts(trace).items():
            assert f"{count}/{max(trace['menu'][layer])}" in svg


def test_group_figures_from_a_checkpoint_and_target_images(tmp_path, tiny_model):
    ckpt, _ = write_source(tmp_path, tiny_model)
    images, _ = make_images(10, 3)
    target = write_target(tmp_path, "b1", images)
    out = write_group_figures(ckpt, target, "b1", tmp_path / "g", groups=0.25, n_images=20)
    assert set(out["layers"]) == {"conv1", "conv2"}
    assert len(set(out["layers"]["conv1"]["assign"])) == 3  # 0.25 of 10 filters = 2.5, half up
    for name in ("b1_filters.png", "b1_embedding.svg", "b1_groups.json"):
        assert (tmp_path / "g" / name).is_file()


def test_episode_differences_count_the_episodes_won_tied_and_lost_and_need_the_baseline(tmp_path):
    from kshot.figures import plot_episode_differences

    df = load_runs(write_runs(tmp_path, benches=("b1",)))
    plot_episode_differences(df, "full", tmp_path / "s")
    svg = _svg_text(tmp_path / "s")
    assert "test accuracy − full's, per episode (pp)" in svg
    for (method, k), g in df[df.method != "full"].groupby(["method", "k"]):
        base = df[(df.method == "full") & (df.k == k)].set_index("episode").test_acc
        d = g.set_index("episode").test_acc - base
        counts = f"{int((d > 0).sum())}/{int((d == 0).sum())}/{int((d < 0).sum())}"
        assert f"{method}, k={k}" in svg and counts in svg
    with pytest.raises(DataError, match="expected 'nope'"):
        plot_episode_differences(pd.DataFrame(df), "nope", tmp_path / "s")


def test_episode_differences_compare_a_tuned_method_with_the_tuned_baseline(tmp_path):
    from kshot.figures import plot_episode_differences

    df = load_runs(write_runs(tmp_path, benches=("b1",)))
    other = sorted(set(df.method) - {"full"})[0]
    tuned_base = df[df.method == "full"].assign(method="full+tuned", test_acc=lambda d: d.test_acc + 0.5)
    tuned = df[df.method == other].assign(method=f"{other}+tuned")
    df = pd.concat([df, tuned_base, tuned], ignore_index=True)
    plot_episode_differences(
        df, "full", tmp_path / "s", {f"{other}+tuned": "full+tuned", "full+tuned": "full+tuned"}
    )
    svg = _svg_text(tmp_path / "s")
    assert "tuned methods: to full+tuned" in svg and "full+tuned, k=" not in svg
    for k, g in tuned.groupby("k"):  # every tuned episode loses to the shifted tuned baseline
        assert f"{other}+tuned, k={k}" in svg and f"0/0/{len(g)}" in svg


def test_forest_plot_has_a_row_per_method_and_k_and_fills_only_significant_markers(tmp_path):
    import matplotlib.pyplot as plt

    from kshot import figures
    from kshot.report import forest_rows, summarise

    summary = summarise(load_runs(write_runs(tmp_path, benches=("b1", "b2"))), "full")
    rows = forest_rows(summary, "full")
    assert "full" not in set(rows.series) and len(rows) == len(summary[summary.method != "full"])
    rows.loc[0, "significant"] = False  # one hollow marker among the filled ones
    captured = []
    original = figures.save
    figures.save = lambda fig, stem: captured.append(fig) or original(fig, stem)
    try:
        figures.plot_forest(rows, tmp_path / "f", "Paired difference to full", "pp")
    finally:
        figures.save = original
    (fig,) = captured
    left = fig.axes[0]
    ticks = [t.get_text() for t in left.get_yticklabels()]
    assert sorted(ticks) == sorted(set(rows.row)) and len(fig.axes) == 2  # one panel per benchmark
    for ax, bench in zip(fig.axes, ("b1", "b2"), strict=True):
        markers = [line for line in ax.lines if line.get_marker() not in (None, "None", "", "|")]
        filled = sum(line.get_markerfacecolor() != "white" for line in markers)
        assert filled == int(rows[rows.panel == bench].significant.sum()) and len(markers) == 4
    plt.close("all")
    assert "filled: the CI excludes 0" in _svg_text(tmp_path / "f")
    with pytest.raises(DataError, match="forest plot: expected columns"):
        figures.plot_forest(rows.drop(columns="ci"), tmp_path / "f", "t", "pp")
