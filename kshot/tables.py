"""Result tables, each rendered three ways from one :class:`Table`: Markdown (reports, README),
LaTeX (booktabs, for a paper) and CSV (the numbers behind it, unformatted, for other tools).

Every number comes from a pipeline output: the per-(benchmark, k, method) summary of
:func:`kshot.report.summarise`, the source checkpoints' ``metrics.json`` and the search traces of
:mod:`kshot.search` (``SearchTrace.to_dict()``). Nothing here computes a statistic that
:mod:`kshot.report` does not define; this module formats and arranges.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kshot.config import TUNED
from kshot.errors import DataError
from kshot.stats import mean_ci, paired_diff, significant

DIGITS = 1  # accuracies in percent, one decimal: the CIs of 10 episodes are a few points wide


@dataclass
class Table:
    """A formatted table: ``cells[i][j]`` is a string, ``bold[i][j]`` marks the best of a column.

    ``groups`` optionally spans header cells: ``[(label, n_columns), ...]`` over ``columns[1:]``
    (the first column is the row label). ``data`` holds the unformatted numbers for CSV.
    """

    title: str
    note: str
    columns: list[str]
    cells: list[list[str]]
    bold: list[list[bool]] = field(default_factory=list)
    groups: list[tuple[str, int]] = field(default_factory=list)
    data: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        if not self.bold:
            self.bold = [[False] * len(r) for r in self.cells]
        for i, row in enumerate(self.cells):
            if len(row) != len(self.columns):
                raise DataError(
                    f"table '{self.title}': row {i} has {len(row)} cells, expected {len(self.columns)}"
                )


def fmt_ci(mean: float, half: float, digits: int = DIGITS, signed: bool = False) -> str:
    """``"81.2 ± 1.9"``; the mean alone when the half-width is ``nan`` (one episode); ``""`` for nan."""
    if mean is None or math.isnan(mean):
        return ""
    if round(mean, digits) == 0:
        mean = 0.0  # neither "-0.0" nor "+0.0"
    m = f"{mean:+.{digits}f}" if signed and mean != 0 else f"{mean:.{digits}f}"
    return m if half is None or math.isnan(half) else f"{m} ± {half:.{digits}f}"


def _order(methods: Sequence[str], baseline: str | None, order: Sequence[str] | None) -> list[str]:
    """``order`` where given (methods absent from it last, sorted), else the baseline first."""
    present = list(dict.fromkeys(methods))
    if order:
        head = [m for m in order if m in present]
        return head + sorted(m for m in present if m not in head)
    rest = sorted(m for m in present if m != baseline)
    return ([baseline] if baseline in present else []) + rest


# ---------------------------------------------------------------- rendering


def to_markdown(t: Table) -> str:
    """GitHub Markdown: a ``###`` title, the note, then the table (bold cells as ``**x**``)."""
    lines = [f"### {t.title}", "", t.note, ""] if t.note else [f"### {t.title}", ""]
    if t.groups:  # Markdown has no spanning headers: prefix the group label to each column
        spans = [lbl for lbl, n in t.groups for _ in range(n)]
        header = [t.columns[0]] + [f"{g} {c}".strip() for g, c in zip(spans, t.columns[1:], strict=True)]
    else:
        header = t.columns
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
    for row, bold in zip(t.cells, t.bold, strict=True):
        cells = [f"**{c}**" if b and c else c for c, b in zip(row, bold, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Each interval of a table stands alone: with many methods and cells some exclude 0 by chance.
UNCORRECTED = (
    " Each CI stands alone (uncorrected for the table's many comparisons: where two methods do not "
    "differ, about 1 in 20 excludes 0 by chance)."
)

# The rows a forest plot draws (kshot.figures.plot_forest): a panel, a colour series and a row
# label, the difference, its 95% CI half-width and whether the CI excludes 0.
FOREST_COLUMNS = ["panel", "series", "row", "diff", "ci", "significant"]


def _html_text(text: str) -> str:
    """Escaped ``text`` with Markdown's `code` and **bold** spans as HTML."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def to_html(t: Table) -> str:
    """An HTML ``<section>``: the title, the note, and the table (spanning group headers, bold
    cells), for pages that show the tables rendered (the Snakemake report)."""
    head = ""
    if t.groups:
        spans = "".join(f'<th colspan="{n}">{_html_text(label)}</th>' for label, n in t.groups)
        head = f"<tr><th></th>{spans}</tr>"
    head += "<tr>" + "".join(f"<th>{_html_text(c)}</th>" for c in t.columns) + "</tr>"
    rows = []
    for row, bold in zip(t.cells, t.bold, strict=True):
        cells = [
            f"<td>{'<strong>' if b and c else ''}{_html_text(c)}{'</strong>' if b and c else ''}</td>"
            for c, b in zip(row, bold, strict=True)
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = f"<p>{_html_text(t.note)}</p>" if t.note else ""
    return (
        f"<section><h3>{_html_text(t.title)}</h3>{note}<table><thead>{head}</thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>\n"
    )


HTML_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #ddd}"
    "th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}p{max-width:60em}"
)


def html_page(tables: Sequence[Table], title: str) -> str:
    """A standalone HTML page of ``tables`` (no script, no external resource)."""
    body = "".join(to_html(t) for t in tables)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n{body}</body></html>\n"
    )


# LaTeX specials, and the non-ASCII symbols the tables' text uses, which plain pdflatex stops on
_LATEX_ESCAPE = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "—": "---",
    "−": "$-$",
    "×": r"$\times$",
}


def latex_escape(text: str) -> str:
    r"""Escape LaTeX specials, write the non-ASCII symbols the tables use as LaTeX commands, and
    set Markdown code spans (`name`) in ``\texttt``."""
    out = "".join(_LATEX_ESCAPE.get(ch, ch) for ch in text)
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", out)


# scales a box down to the line width when it is wider, and leaves it as it is otherwise
_FIT_TO_LINE = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"


def to_latex(t: Table, label: str | None = None) -> str:
    """A booktabs ``table`` environment with caption (title + note) and optional ``\\label``.

    Needs ``\\usepackage{booktabs}`` and ``graphicx``: the tabular is scaled down to the line
    width where it is wider, and only there. At their natural size, compiled with pdflatex on A4
    with 1 cm margins, the regime table (13 columns) ran 650pt past the text and the ablation table
    (7 columns of long names) 125pt.
    """
    ncol = len(t.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + latex_escape(t.title + (". " + t.note if t.note else "")) + "}",
    ]
    if label:
        lines.append(r"\label{" + label + "}")
    lines += [_FIT_TO_LINE, r"\begin{tabular}{l" + "r" * (ncol - 1) + "}", r"\toprule"]
    if t.groups:
        spans, rules, col = [""], [], 2
        for lbl, n in t.groups:
            spans.append(r"\multicolumn{" + str(n) + "}{c}{" + latex_escape(lbl) + "}")
            if lbl:
                rules.append(r"\cmidrule(lr){" + f"{col}-{col + n - 1}" + "}")
            col += n
        lines.append(" & ".join(spans) + r" \\")
        if rules:
            lines.append(" ".join(rules))
    lines.append(" & ".join(latex_escape(c) for c in t.columns) + r" \\")
    lines.append(r"\midrule")
    for row, bold in zip(t.cells, t.bold, strict=True):
        cells = [
            r"\textbf{" + latex_escape(c) + "}" if b and c else latex_escape(c)
            for c, b in zip(row, bold, strict=True)
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main results


# A results table per benchmark and block when the run has tuned methods (kshot.report.blocks)
BLOCK_TITLES = {"tuned": ", every method tuned", "defaults": ", options as written (untuned)"}
BLOCK_NOTES = {
    "tuned": (
        " Tuned: each method ran with the options its tune stage chose from its grid (`<method>+tuned`),"
        " grouped_rl with its searched group counts, both under the same budget of candidates"
        " (search.budget) scored on the validation sets of the search episodes and re-checked on the"
        " selection episodes; never on test data. Methods without options to tune appear as they are."
    ),
    "defaults": " Untuned: every method with the options as written in params.yaml.",
}


def _blocks_of(summary: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """``((benchmark, block), rows)`` per benchmark, the tuned block first; a summary without a
    ``block`` column is one block, ``''``."""
    if "block" not in summary:
        return [((b, ""), g) for b, g in summary.groupby("benchmark", sort=True)]
    out = []
    for bench, g in summary.groupby("benchmark", sort=True):
        block_names = set(g.block)
        if block_names == {"defaults"}:
            out.append(((bench, ""), g))
            continue
        out += [((bench, b), g[g.block == b]) for b in ("tuned", "defaults") if b in block_names]
    return out


def main_tables(
    summary: pd.DataFrame,
    baseline: str,
    order: Sequence[str] | None = None,
    targets: Mapping[str, str] | None = None,
) -> list[Table]:
    """One table per benchmark: methods x k, mean test accuracy ± 95% CI, then the paired
    difference against ``baseline`` per k (``*`` when its CI excludes 0). ``targets``: per
    benchmark, its target classes as the caption names them (:func:`target_classes_note`).

    The best mean of each k column is bold, and so is every mean equal to it at the printed
    precision (a tie the reader cannot tell apart is shown as a tie).
    """
    need = {"benchmark", "k", "method", "test_acc", "ci95", "diff_vs_baseline", "diff_ci95"}
    missing = sorted(need - set(summary.columns))
    if missing:
        raise DataError(f"summary: expected columns {sorted(need)}, missing {missing}")
    tables = []
    for (bench, block), g in _blocks_of(summary):
        baseline = str(g.baseline.iloc[0]) if "baseline" in g else baseline
        ks = sorted(int(k) for k in g.k.unique())
        n_eps = sorted({int(n) for n in g.n_episodes}) if "n_episodes" in g else []
        best = {k: round(float(g[g.k == k].test_acc.max()), DIGITS) for k in ks}
        cells, bold = [], []
        for method in _order(g.method.tolist(), baseline, order):
            m = g[g.method == method].set_index("k")
            row, brow = [method], [False]
            for k in ks:
                if k not in m.index:
                    row.append("")
                    brow.append(False)
                    continue
                r = m.loc[k]
                n_div = int(r.get("n_diverged", 0) or 0)
                diverged = f" ({n_div}/{int(r.n_episodes)} diverged)" if n_div else ""
                row.append(fmt_ci(r.test_acc, r.ci95) + diverged)
                brow.append(round(float(r.test_acc), DIGITS) == best[k])
            for k in ks:
                if k not in m.index or method == baseline:
                    row.append("—" if method == baseline else "")
                else:
                    r = m.loc[k]
                    d = fmt_ci(r.diff_vs_baseline, r.diff_ci95, signed=True)
                    row.append(d + (" *" if bool(r.get("significant", False)) else ""))
                brow.append(False)
            cells.append(row)
            bold.append(brow)
        eps = "/".join(str(n) for n in n_eps) or "?"
        note = (
            f"Test accuracy (%), mean ± 95% t-interval over {eps} episodes (the same episodes for "
            f"every method). Δ: paired difference to `{baseline}` in percentage points, its 95% CI "
            f"computed on per-episode differences; * when that CI excludes 0.{UNCORRECTED} Bold: best "
            "mean per k."
        )
        if targets and bench in targets:
            note += f" Target classes: {targets[bench]}."
        note += diverged_note(g) + BLOCK_NOTES.get(block, "")
        cols = ["method"] + [f"k={k}" for k in ks] + [f"k={k}" for k in ks]
        tables.append(
            Table(
                title=f"{bench}: test accuracy by method and shots per class{BLOCK_TITLES.get(block, '')}",
                note=note,
                columns=cols,
                cells=cells,
                bold=bold,
                groups=[("accuracy (%)", len(ks)), (f"Δ vs {baseline} (pp)", len(ks))],
                data=g.reset_index(drop=True),
            )
        )
    return tables


def target_classes_note(dataset: str, classes: Sequence[int], names: Sequence[str] | None) -> str:
    """``fashion_mnist 5 Sandal, 6 Shirt, ...``: a benchmark's target classes, by their label in
    ``dataset`` and, where it has other names, by name, in the episodes' label order (0, 1, ...)."""
    cells = []
    for c in classes:
        name = names[c] if names is not None and 0 <= c < len(names) else None
        cells.append(f"{c} {name}" if name is not None and name != str(c) else str(c))
    return f"{dataset} {', '.join(cells)}"


def diverged_note(g: pd.DataFrame) -> str:
    """The caption's warning when runs diverged (a non-finite loss): which, on how many episodes;
    their accuracy is that of the last finite state the validation kept."""
    if "n_diverged" not in g or not (g.n_diverged.fillna(0) > 0).any():
        return ""
    cells = [
        f"{r.method} k={int(r.k)} ({int(r.n_diverged)}/{int(r.n_episodes)})"
        for r in g[g.n_diverged.fillna(0) > 0].sort_values(["method", "k"]).itertuples()
    ]
    return (
        " **Diverged** (a non-finite training loss; the accuracy is that of the best state the "
        f"validation kept before it): {', '.join(cells)}."
    )


def numerics_label(record: Mapping[str, Any] | None) -> str:
    """``cpu AVX512, 2 threads, torch 2.14.1`` from a checkpoint's ``numerics`` record (older
    checkpoints have none: an empty string)."""
    if not record:
        return ""
    where = record.get("gpu") or f"{record.get('device', '?')} {record.get('cpu_capability', '')}".strip()
    return f"{where}, {record.get('threads', '?')} threads, torch {record.get('torch', '?')}"


def source_table(sources: Sequence[Mapping[str, Any]]) -> Table:
    """Source pre-training: one row per source checkpoint ``metrics.json``."""
    if not sources:
        raise DataError("source metrics: expected at least one source, found none")
    rows, data = [], []
    for s in sorted(sources, key=lambda s: s.get("source", "")):
        for key in ("source", "backbone", "source_test_acc"):
            if key not in s:
                raise DataError(f"source metrics: expected key '{key}', found {sorted(s)}")
        epochs = s.get("epochs") or []
        last_loss = epochs[-1]["train_loss"] if epochs else math.nan
        rec = {
            "source": s["source"],
            "backbone": s["backbone"],
            "n_params": s.get("n_params"),
            "epochs": len(epochs),
            "final_train_loss": last_loss,
            "train_acc": 100 * s["source_train_acc"] if "source_train_acc" in s else math.nan,
            "test_acc": 100 * s["source_test_acc"],
            "computed_on": numerics_label(s.get("numerics")),
        }
        data.append(rec)
        rows.append(
            [
                rec["source"],
                rec["backbone"],
                f"{rec['n_params']:,}" if rec["n_params"] is not None else "",
                str(rec["epochs"]),
                "" if math.isnan(last_loss) else f"{last_loss:.3f}",
                "" if math.isnan(rec["train_acc"]) else f"{rec['train_acc']:.1f}",
                f"{rec['test_acc']:.1f}",
                rec["computed_on"],
            ]
        )
    return Table(
        title="Source pre-training",
        note="Accuracy (%) of each source network on its own classes before any fine-tuning; "
        "train accuracy on up to 10,000 training images. Computed on: the device, its kernels' "
        "instruction set and the threads of the pre-training. Every later number is reproduced bit "
        "for bit only with the same kernels and threads: on another CPU type the source network, "
        "and every number after it, differs by float rounding (README, Reproducibility).",
        columns=[
            "source",
            "backbone",
            "parameters",
            "epochs",
            "final train loss",
            "train acc",
            "test acc",
            "computed on",
        ],
        cells=rows,
        data=pd.DataFrame(data),
    )


# ---------------------------------------------------------------- search


def trace_curve(trace: Mapping[str, Any]) -> pd.DataFrame:
    """Best-so-far reward against evaluations for one ``SearchTrace`` dict.

    One row per sample: ``iteration``, ``evaluations`` (distinct configurations fine-tuned so far,
    the search's cost), ``reward``, ``cached``, ``best_so_far``.
    """
    samples = trace.get("samples")
    if not samples:
        raise DataError(f"search trace ({trace.get('strategy', '?')}): expected samples, found none")
    rows, n_eval, best = [], 0, -math.inf
    for s in samples:
        if not s["cached"]:
            n_eval += 1
        best = max(best, float(s["reward"]))
        rows.append(
            {
                "iteration": int(s["iteration"]),
                "evaluations": n_eval,
                "reward": float(s["reward"]),
                "cached": bool(s["cached"]),
                "best_so_far": best,
            }
        )
    return pd.DataFrame(rows)


def _key(key: Any) -> str:
    return " ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def chosen_counts(trace: Mapping[str, Any]) -> dict[str, int]:
    """The counts per layer ``grouped_rl`` uses from a ``SearchTrace.to_dict()``: ``chosen_counts``
    (after the selection stage), else, for a trace written before that stage, ``best_counts``."""
    return trace.get("chosen_counts") or trace.get("best_counts") or {}


def _pct(x: float | None) -> float:
    return float("nan") if x is None else 100 * float(x)


def search_table(traces: Mapping[Any, Mapping[str, Any]]) -> Table:
    """Chosen group counts per layer and rewards, one row per search.

    ``traces`` maps a label (e.g. ``(benchmark, k)`` or ``(benchmark, k, strategy)``) to a
    ``SearchTrace.to_dict()``. A count is shown as ``G/N`` (groups of the layer's largest menu
    entry, its neuron count); the counts are the *chosen* ones (what ``grouped_rl`` uses: after the
    selection stage where there is one, else the search's best). ``best reward``: the highest search
    reward; ``final reward``: the mean reward of the last quarter of samples (where the policy has
    converged, that is the reward of what it now samples); ``chosen`` / ``ungrouped``: the
    selection rewards of the chosen and of the ungrouped configuration (empty without selection).
    Random search (the control) rows read the same.
    """
    if not traces:
        raise DataError("search traces: expected at least one, found none")
    layers: list[str] = []
    for t in traces.values():
        layers += [name for name in t["layers"] if name not in layers]
    rows, data = [], []
    for key, t in traces.items():
        curve = trace_curve(t)
        tail = curve.reward.iloc[-max(1, len(curve) // 4) :]
        chosen = chosen_counts(t)
        finalists = t.get("finalists") or []
        picked = next((f for f in finalists if f["counts"] == chosen), None)
        plain = next((f for f in finalists if f["ungrouped"]), None)
        rec: dict[str, Any] = {
            "search": _key(key),
            "strategy": t["strategy"],
            **{f"groups_{name}": chosen.get(name) for name in layers},
            "best_reward": 100 * float(t["best_reward"]),
            "final_reward": 100 * float(tail.mean()),
            "chosen_select_reward": _pct(picked and picked["select_reward"]),
            "ungrouped_select_reward": _pct(plain and plain["select_reward"]),
            "chosen_ungrouped": bool(picked and picked["ungrouped"]),
            "evaluations": int(t["n_evaluations"]),
            "samples": len(curve),
            "budget": int(t["budget"]),
        }
        data.append(rec)
        counts = [f"{chosen[name]}/{max(t['menu'][name])}" if name in chosen else "" for name in layers]
        rows.append(
            [
                rec["search"],
                rec["strategy"],
                *counts,
                f"{rec['best_reward']:.1f}",
                f"{rec['final_reward']:.1f}",
                fmt_ci(rec["chosen_select_reward"], None)
                + (" (ungrouped)" if rec["chosen_ungrouped"] else ""),
                fmt_ci(rec["ungrouped_select_reward"], None),
                f"{rec['evaluations']}/{rec['budget']}",
                str(rec["samples"]),
            ]
        )
    return Table(
        title="Group-count search",
        note="Chosen groups per layer (groups/neurons: what `grouped_rl` uses); search rewards (%): "
        "the best, and the mean of the last quarter of samples (final); selection rewards (%): the "
        "full-fidelity validation accuracy, on selection episodes the search never saw, of the "
        "chosen counts and of the ungrouped configuration (plain fine-tuning), which the chosen "
        "counts must beat to be used; evaluations: distinct configurations fine-tuned out of the "
        "budget. `random` is the control search with the same budget.",
        columns=[
            "search",
            "strategy",
            *layers,
            "best reward",
            "final reward",
            "chosen (selection)",
            "ungrouped (selection)",
            "evaluations",
            "samples",
        ],
        cells=rows,
        data=pd.DataFrame(data),
    )


# ---------------------------------------------------------------- ablations and regimes


def ablation_table(
    df: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    title: str = "Ablations",
    note: str = "",
) -> Table:
    """Paired differences ``a - b`` (percentage points, 95% CI over episodes) for each
    ``(a, b)`` of ``pairs``, per benchmark and k; ``df`` is the per-episode frame of
    :func:`kshot.report.load_runs`. E.g. ``("grouped", "grouped_random")`` isolates what the
    activation grouping adds beyond its degrees of freedom. A pair with no common episode is
    left blank."""
    cols_bk = sorted({(b, int(k)) for b, k in zip(df.benchmark, df.k, strict=True)})
    acc = df.set_index(["method", "benchmark", "k", "episode"])["test_acc"].sort_index()
    rows, bold, data = [], [], []
    for a, b in pairs:
        row, brow = [f"{a} − {b}"], [False]
        for bench, k in cols_bk:
            try:
                xa, xb = acc.loc[(a, bench, k)], acc.loc[(b, bench, k)]
            except KeyError:
                row.append("")
                brow.append(False)
                continue
            d, h, n = paired_diff(xa, xb)
            if not n:
                row.append("")
                brow.append(False)
                continue
            row.append(fmt_ci(d, h, signed=True) + (" *" if significant(d, h) else ""))
            brow.append(False)
            data.append({"a": a, "b": b, "benchmark": bench, "k": k, "diff": d, "ci95": h, "n": n})
        rows.append(row)
        bold.append(brow)
    return Table(
        title=title,
        note=note
        or "Paired difference of test accuracy (percentage points), mean ± 95% CI over the "
        f"episodes both methods ran; * when the CI excludes 0.{UNCORRECTED}",
        columns=["comparison"] + [f"{b} k={k}" for b, k in cols_bk],
        cells=rows,
        bold=bold,
        data=pd.DataFrame(data),
    )


def replicates_table(
    df: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    replicate_of: Mapping[str, tuple[str, int]],
    title: str = "Replicates",
    note: str = "",
) -> Table:
    """Paired differences ``a - b`` per replicate of the source network, and across them.

    ``replicate_of`` maps each benchmark of ``df`` to ``(base benchmark, pre-training seed)``;
    columns are base benchmarks and k. For each pair, one row per seed (mean ± 95% CI over that
    replicate's episodes) and an ``across`` row: the mean of the replicates' means with the
    t-interval over them (n = replicates), the interval that counts a new source network as a new
    draw. A replicate missing a run is left blank there and left out of ``across``."""
    missing = sorted(set(df.benchmark) - set(replicate_of))
    if missing:
        raise DataError(f"replicates: expected a base benchmark and seed for every run, missing {missing}")
    acc = df.set_index(["method", "benchmark", "k", "episode"])["test_acc"].sort_index()
    cols = sorted({(replicate_of[b][0], int(k)) for b, k in zip(df.benchmark, df.k, strict=True)})
    seeds = sorted({seed for _, seed in replicate_of.values()})
    by_key = {(base, seed): bench for bench, (base, seed) in replicate_of.items()}
    rows, data = [], []
    for a, b in pairs:
        found: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in cols}
        for seed in seeds:
            row = [f"{a} − {b}, source seed {seed}"]
            for base, k in cols:
                bench = by_key.get((base, seed))
                try:
                    d, h, n = paired_diff(acc.loc[(a, bench, k)], acc.loc[(b, bench, k)])
                except KeyError:
                    d, h, n = math.nan, math.nan, 0
                if not n:
                    row.append("")
                    continue
                found[(base, k)].append((d, h))
                row.append(fmt_ci(d, h, signed=True) + (" *" if significant(d, h) else ""))
                data.append(
                    {"a": a, "b": b, "benchmark": base, "k": k, "seed": seed, "diff": d, "ci95": h, "n": n}
                )
            rows.append(row)
        row = [f"{a} − {b}, across sources"]
        for base, k in cols:
            cells = found[(base, k)]
            if len(cells) < 2:
                row.append("")
                continue
            d, h = mean_ci(np.asarray([m for m, _ in cells]))
            up = sum(significant(m, w) and m > 0 for m, w in cells)
            down = sum(significant(m, w) and m < 0 for m, w in cells)
            star = " *" if significant(d, h) else ""
            row.append(f"{fmt_ci(d, h, signed=True)}{star} ({up}↑ {down}↓)")
            data.append(
                {
                    "a": a,
                    "b": b,
                    "benchmark": base,
                    "k": k,
                    "seed": None,
                    "diff": d,
                    "ci95": h,
                    "n": len(cells),
                }
            )
        rows.append(row)
    return Table(
        title=title,
        note=note
        or "Paired difference of test accuracy (percentage points) per source replicate, mean ± 95% "
        "CI over its episodes, * when the CI excludes 0; across sources: mean and 95% CI over the "
        f"replicates' means, with how many replicates were significantly up (↑) and down (↓).{UNCORRECTED}",
        columns=["comparison"] + [f"{b} k={k}" for b, k in cols],
        cells=rows,
        data=pd.DataFrame(data),
    )


# ---------------------------------------------------------------- the README's headline

HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin -->", "<!-- headline:end -->"
PEERS_BEGIN, PEERS_END = "<!-- peers:begin -->", "<!-- peers:end -->"
RESNET_BEGIN, RESNET_END = "<!-- resnet:begin -->", "<!-- resnet:end -->"
RESNET_PEERS_BEGIN, RESNET_PEERS_END = "<!-- resnet_peers:begin -->", "<!-- resnet_peers:end -->"
STUDIES_BEGIN, STUDIES_END = "<!-- studies:begin -->", "<!-- studies:end -->"
# the studies whose findings.md the README's studies block gathers, in its order
FINDINGS = {
    "replicates": ("The replicate study", "replicates"),
    "resnet_replicates": ("The ResNet-18 replicate study", "resnet_replicates"),
    "regime": ("The regime study", "regime"),
    "sources": ("The source-effect study", "source_effect"),
    "alignment": ("The alignment study", "alignment"),
    "maps": ("The activation-maps study", "maps"),
}


def _headline_cell(value: float | None, signed: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if signed:
        return "0.00" if round(value, 2) == 0 else f"{value:+.2f}"
    return f"{value:.1f}"


def headline_markdown(metrics: Mapping[str, Any]) -> str:
    """The README's headline tables from ``reports/metrics_by_cell.json``
    (:func:`kshot.report.headline_metrics`).

    One table per baseline (per ``diff_vs_<name>`` key with differences; a tuned baseline
    ``<name>+tuned`` first): one row per benchmark and k, the baseline's mean test accuracy (%) and
    every other method's mean paired difference to it (percentage points), then a caption line and
    what the table shows (:func:`findings_markdown`). Methods follow the baseline in name order,
    benchmarks and k in order.
    """
    diff_keys = [key for key in metrics if key.startswith("diff_vs_") and metrics[key]]
    if not diff_keys or "test_acc" not in metrics or "n_episodes" not in metrics:
        raise DataError(
            "metrics: expected the keys test_acc, n_episodes and a diff_vs_<baseline> with differences, "
            f"found {sorted(metrics)}"
        )
    diff_keys.sort(key=lambda key: (not key.endswith(TUNED), key))
    return "\n".join(_headline_block(metrics, key.removeprefix("diff_vs_")) for key in diff_keys)


def _headline_block(metrics: Mapping[str, Any], baseline: str) -> str:
    test, diff = metrics["test_acc"], metrics[f"diff_vs_{baseline}"]
    named = [m for cells in diff.values() for ms in cells.values() for m in ms]
    methods = [m for m in _order(named, baseline, None) if m != baseline]
    header = ["benchmark", "k", f"{baseline} (%)"] + [f"{m} − {baseline}" for m in methods]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "--:|" * (len(header) - 1)]
    for bench in sorted(diff):
        for key in sorted(test[bench], key=lambda k: int(k.removeprefix("k"))):
            cells = [
                _headline_cell(test[bench][key].get(baseline), signed=False),
                *(_headline_cell(diff.get(bench, {}).get(key, {}).get(m), signed=True) for m in methods),
            ]
            lines.append("| " + " | ".join([bench, key.removeprefix("k"), *cells]) + " |")
    which = (
        "**Tuned** (each method with the options its tune stage chose on validation data, or its "
        "searched group counts, under one budget): "
        if baseline.endswith(TUNED)
        else ("**Untuned** (options as written): " if any(k.endswith(TUNED) for k in metrics) else "")
    )
    lines += [
        "",
        f"{which}`{baseline}`: mean test accuracy (%); every other column: that method's mean paired "
        f"difference to `{baseline}` (percentage points). Means over {metrics['n_episodes']} evaluation "
        "episodes per benchmark and k, the same episodes for every method; which differences are "
        "significant, with 95% intervals, is in `reports/tables/results.md`.",
    ]
    findings = findings_markdown(metrics, baseline)
    return "\n".join(lines) + "\n" + (f"\n{findings}" if findings else "")


def differences_by_method(
    diffs: Mapping[str, Mapping[str, Mapping[str, float | None]]],
) -> dict[str, list[float]]:
    """Per method, its defined paired differences over the cells of ``diff_vs_<baseline>``
    (benchmark -> k -> method -> difference or ``None``)."""
    per: dict[str, list[float]] = {}
    for cells in diffs.values():
        for by_method in cells.values():
            for method, value in by_method.items():
                if value is not None:
                    per.setdefault(method, []).append(value)
    return per


def _where(cells: Mapping[str, Sequence[int]]) -> str:
    """``{"fashion": [1, 5], "digits": [10]}`` as ``digits k=10 and fashion k=1, 5``."""
    return " and ".join(
        f"{bench} k={', '.join(str(k) for k in ks)}" for bench, ks in sorted(cells.items()) if ks
    )


def findings_markdown(
    metrics: Mapping[str, Any],
    baseline: str,
    title: str = "**What this run shows** (written by `kshot readme` from these metrics)",
) -> str:
    """What the run shows, in words, from the per-cell ``metrics``: whether a method is
    significantly above ``baseline`` in most cells (benchmark x k), then per method (best mean
    first) its mean paired difference over the cells and the cells where it is significantly above
    and below. Empty for metrics without ``significant_vs_<baseline>``. ``title`` opens the
    paragraph."""
    significant = metrics.get(f"significant_vs_{baseline}")
    if not significant:
        return ""
    per = differences_by_method(metrics[f"diff_vs_{baseline}"])
    mean = {m: sum(v) / len(v) for m, v in per.items()}
    ranked = sorted(per, key=lambda m: (-mean[m], m))

    def side(method: str, which: str) -> dict[str, list[int]]:
        return significant.get(method, {}).get(which, {})

    def count(method: str, which: str) -> int:
        return sum(len(ks) for ks in side(method, which).values())

    ahead = [m for m in ranked if count(m, "above") > len(per[m]) / 2]
    n_cells = max(len(v) for v in per.values())
    lead = (
        f"{', '.join(f'`{m}`' for m in ahead)} significantly above `{baseline}` in most cells"
        if ahead
        else f"no method is significantly above `{baseline}` in most of the {n_cells} cells (benchmark x k)"
    )

    def where(method: str) -> str:
        parts = [
            f"{which} in {_where(side(method, which))}"
            for which in ("above", "below")
            if count(method, which)
        ]
        return "; ".join(parts) if parts else "in no cell"

    cells = "; ".join(f"`{m}` {mean[m]:+.2f} pp ({where(m)})" for m in ranked)
    n_significant = sum(count(m, which) for m in per for which in ("above", "below"))
    return (
        f"{title}: {lead}. Mean paired difference over the cells, and where it is significantly "
        f"above or below `{baseline}` (95% interval of the paired difference excluding 0): {cells}. "
        f"{chance_note(n_significant, sum(map(len, per.values())))}\n"
    )


def chance_note(n_significant: int, n_comparisons: int, level: float = 0.95) -> str:
    """How many of ``n_comparisons`` intervals at ``level`` exclude 0 against how many would by
    chance alone were no method different (each interval is uncorrected for the others)."""
    expected = n_comparisons * (1 - level)
    return (
        f"{n_significant} of the {n_comparisons} per-cell comparisons are significant; about "
        f"{expected:.1f} would be by chance alone (each interval at {level:.0%}, uncorrected)."
    )


# The studies with a block of their own in the README: name -> (title, markers)
STUDY_BLOCKS = {
    "peers": ("The peers study", PEERS_BEGIN, PEERS_END),
    "resnet": ("The ResNet-18 study", RESNET_BEGIN, RESNET_END),
    "resnet_peers": ("The peers on ResNet-18", RESNET_PEERS_BEGIN, RESNET_PEERS_END),
}


def study_markdown(metrics: Mapping[str, Any], study: str = "peers") -> str:
    """The README's paragraphs on ``study`` (a key of :data:`STUDY_BLOCKS`) from its
    ``reports/<study>/metrics_by_cell.json``: per baseline (the tuned one first)
    :func:`findings_markdown`, the tables being in reports/<study>/; for the ResNet-18 study the
    source networks' accuracy first (its peers study shares its source)."""
    diff_keys = [key for key in metrics if key.startswith("diff_vs_") and metrics[key]]
    if not diff_keys:
        raise DataError(
            f"{study} metrics: expected a diff_vs_<baseline> with differences, found {sorted(metrics)}"
        )
    diff_keys.sort(key=lambda key: (not key.endswith(TUNED), key))
    title = STUDY_BLOCKS[study][0]
    paragraphs = []
    sources = metrics.get("source_test_acc") or {}
    if study == "resnet" and sources:
        accs = ", ".join(f"`{s}` {float(a):.1f}%" for s, a in sorted(sources.items()))
        paragraphs.append(f"**{title}**: source networks' test accuracy on their own task: {accs}.\n")
    for key in diff_keys:
        baseline = key.removeprefix("diff_vs_")
        block = "tuned methods" if baseline.endswith(TUNED) else "methods as written"
        paragraphs.append(
            findings_markdown(
                metrics,
                baseline,
                f"**{title}, {block}** (`snakemake {study}`; written by `kshot readme` from "
                f"`reports/{study}/metrics_by_cell.json`, {metrics['n_episodes']} episodes per cell)",
            )
        )
    return "\n".join(p for p in paragraphs if p)


def peers_markdown(metrics: Mapping[str, Any]) -> str:
    """:func:`study_markdown` of the peers study."""
    return study_markdown(metrics, "peers")


def with_block(
    text: str,
    markdown: str,
    where: str,
    begin: str = HEADLINE_BEGIN,
    end: str = HEADLINE_END,
) -> str:
    """``text`` (the README, read from ``where``) with the block between the markers ``begin`` and
    ``end`` replaced by ``markdown``."""
    begins, ends = text.count(begin), text.count(end)
    if begins != 1 or ends != 1 or text.index(begin) > text.index(end):
        raise DataError(
            f"{where}: expected the markers {begin} and then {end}, once each, "
            f"found them {begins} and {ends} times{' in the other order' if begins == ends == 1 else ''}"
        )
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{markdown}{end}{tail}"


def with_headline(text: str, metrics: Mapping[str, Any], where: str) -> str:
    """``text`` with the headline block replaced by :func:`headline_markdown` of ``metrics``."""
    return with_block(text, headline_markdown(metrics), where)


def with_study(text: str, metrics: Mapping[str, Any], where: str, study: str = "peers") -> str:
    """``text`` with ``study``'s block replaced by :func:`study_markdown` of ``metrics``."""
    _, begin, end = STUDY_BLOCKS[study]
    return with_block(text, study_markdown(metrics, study), where, begin, end)


def with_peers(text: str, metrics: Mapping[str, Any], where: str) -> str:
    """``text`` with the peers block replaced by :func:`peers_markdown` of ``metrics``."""
    return with_study(text, metrics, where, "peers")


def findings_paragraph(study: str, findings: str, where: str) -> str:
    """One README list item on companion ``study`` (a key of :data:`FINDINGS`) from its findings.md
    (``where``): the study's name and target, then its bullets as sentences."""
    if study not in FINDINGS:
        raise DataError(f"--findings: expected a study of {sorted(FINDINGS)}, found '{study}'")
    items = [line.removeprefix("- ").strip() for line in findings.splitlines() if line.strip()]
    if not items:
        raise DataError(f"{where}: expected the study's findings, found an empty file")
    title, target = FINDINGS[study]
    return (
        f"- **{title}** (`snakemake {target}`; written by `kshot readme` from `{where}`): "
        + " ".join(items)
        + "\n"
    )


def with_findings(text: str, findings: Mapping[str, tuple[str, str]], where: str) -> str:
    """``text`` with the studies block replaced by one line per study of ``findings``
    (``{study: (findings.md text, its path)}``), in the order of :data:`FINDINGS`."""
    lines = [findings_paragraph(s, *findings[s]) for s in FINDINGS if s in findings]
    return with_block(text, "".join(lines), where, STUDIES_BEGIN, STUDIES_END)
