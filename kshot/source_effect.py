"""The source-effect study's tables, figure and findings: does the source matter, for which
target, and does fine-tuning hide it?

After the study of pre-training sources in breast imaging that the seed documents cite: a source
can help one target and not another, and fine-tuning can *mask* an ineffective source, i.e. the
differences that frozen features show between sources shrink once every layer is fine-tuned. Each
target (a benchmark's target task) is learned from each source on the same episodes; each cell
``(target, k, source)`` has every method's test accuracy, and the source's linear CKA with the
target task (:func:`kshot.similarity.task_similarity`, on the target's training pool).

The *effect* of a source for a method is its paired difference of test accuracy against the
control source (random weights: what the architecture gives without pre-training), over the
episodes both ran. A source is **effective** for a target where the effect is significantly
above 0; fine-tuning **masks** it where the frozen-feature methods show a significant effect and
full fine-tuning does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from kshot.errors import DataError
from kshot.figures import method_styles, save_with_top_legend
from kshot.io import atomic_path, read_json, write_json, write_text
from kshot.report import json_records, load_runs, write_table_set
from kshot.stats import mean_ci, paired_diff, significant
from kshot.tables import Table, fmt_ci

FROZEN = ("linear", "centroid")  # methods that keep the source's features as they are
FINE_TUNED = ("full",)  # the method whose effect says whether fine-tuning masks the source's


def _base(method: str) -> str:
    return method.removesuffix("+tuned")


def cell_frame(runs: pd.DataFrame, cells: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """``runs`` (:func:`kshot.report.load_runs`) with each row's ``target`` (base benchmark) and
    ``source``; a run of a benchmark that is no cell of the study is an error naming it."""
    unknown = sorted(set(runs.benchmark) - set(cells))
    if unknown:
        raise DataError(f"--cells: expected every run's benchmark among the study's cells, found {unknown}")
    out = runs.copy()
    out["target"] = [cells[b][0] for b in out.benchmark]
    out["source"] = [cells[b][1] for b in out.benchmark]
    return out


def effects(df: pd.DataFrame, control: str) -> pd.DataFrame:
    """Per ``(target, k, source ≠ control, method)``: the paired difference of test accuracy
    (percentage points) against the control source on the same episodes, its 95% CI half-width,
    the episodes both ran and whether it is significant."""
    for target, g in df.groupby("target"):
        if control not in set(g.source):
            raise DataError(
                f"source-effect runs: expected runs from the control source '{control}' for target "
                f"'{target}', found sources {sorted(set(g.source))} (a control trained on the "
                "target's classes is left out of its cells)"
            )
    acc = df.set_index(["target", "k", "source", "method", "episode"])["test_acc"].sort_index()
    rows = []
    for (target, k, source, method), _ in df.groupby(["target", "k", "source", "method"], sort=True):
        if source == control:
            continue
        try:
            a, b = acc.loc[(target, k, source, method)], acc.loc[(target, k, control, method)]
        except KeyError:
            continue
        d, h, n = paired_diff(a, b)
        if n:
            rows.append(
                {
                    "target": target,
                    "k": int(k),
                    "source": source,
                    "method": method,
                    "diff": d,
                    "ci95": h,
                    "n": n,
                }
            )
    out = pd.DataFrame(rows, columns=["target", "k", "source", "method", "diff", "ci95", "n"])
    out["significant"] = [significant(d, h) for d, h in zip(out["diff"], out["ci95"], strict=True)]
    return out


def verdicts(effect: pd.DataFrame) -> pd.DataFrame:
    """Per ``(target, k, source)``: whether the source is effective (full fine-tuning's effect
    significantly above 0, or where full did not run, a frozen method's), harmful (that effect
    significantly below 0: negative transfer) and whether fine-tuning masks it (a frozen method's
    effect significant, full fine-tuning's not)."""
    rows = []
    for (target, k, source), g in effect.groupby(["target", "k", "source"], sort=True):
        by = {_base(m): r for m, r in zip(g.method, g.itertuples(), strict=True)}
        frozen = [by[m] for m in FROZEN if m in by]
        tuned = [by[m] for m in FINE_TUNED if m in by]
        frozen_sig = any(r.significant for r in frozen)
        tuned_sig = any(r.significant and r.diff > 0 for r in tuned)
        effective = tuned_sig if tuned else any(r.significant and r.diff > 0 for r in frozen)
        harmful = not effective and any(r.significant and r.diff < 0 for r in (tuned or frozen))
        # the frozen-feature effect that speaks: the largest significant one, else the largest
        speaking = [r for r in frozen if r.significant] or frozen
        rows.append(
            {
                "target": target,
                "k": int(k),
                "source": source,
                "effective": bool(effective),
                "harmful": bool(harmful),
                "masked": bool(frozen_sig and tuned and not any(r.significant for r in tuned)),
                "frozen_effect": max((r.diff for r in speaking), key=abs, default=float("nan")),
                "fine_tuned_effect": tuned[0].diff if tuned else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def accuracy_table(
    df: pd.DataFrame, cka: Mapping[str, Mapping[str, Any]], cells: Mapping[str, tuple[str, str]]
) -> Table:
    """Mean test accuracy ± 95% CI per method, one row per ``(target, k, source)``, with the
    source's linear CKA with the target task (penultimate features)."""
    methods = list(dict.fromkeys(df.sort_values("method").method))
    cka_of = {cells[b]: c["cka"].get("features") for b, c in cka.items() if b in cells}
    rows, data = [], []
    for (target, k, source), g in df.groupby(["target", "k", "source"], sort=True):
        row = [f"{target} k={int(k)}, {source}"]
        for m in methods:
            accs = g[g.method == m].test_acc.to_numpy() * 100
            if len(accs):
                mean, half = mean_ci(accs)
                row.append(fmt_ci(mean, half))
                data.append(
                    {"target": target, "k": int(k), "source": source, "method": m, "mean": mean, "ci95": half}
                )
            else:
                row.append("")
        value = cka_of.get((target, source))
        row.append("" if value is None else f"{value:.3f}")
        rows.append(row)
    return Table(
        title="Source effect: test accuracy by target, k and source",
        note="Mean test accuracy (%) ± 95% CI over the same evaluation episodes for every source; "
        "CKA: linear CKA of the source's penultimate features with the target's one-hot labels on "
        "its training pool (1: the features' similarity structure is the classes').",
        columns=["target, k, source", *methods, "CKA"],
        cells=rows,
        data=pd.DataFrame(data),
    )


def effect_table(effect: pd.DataFrame, verdict: pd.DataFrame, control: str) -> Table:
    """The paired effects against the control source per method, and the verdicts."""
    methods = list(dict.fromkeys(effect.sort_values("method").method))
    rows = []
    for v in verdict.itertuples():
        g = effect[(effect.target == v.target) & (effect.k == v.k) & (effect.source == v.source)]
        row = [f"{v.target} k={v.k}, {v.source}"]
        for m in methods:
            r = g[g.method == m]
            row.append(
                ""
                if r.empty
                else fmt_ci(r["diff"].iloc[0], r["ci95"].iloc[0], signed=True)
                + (" *" if r.significant.iloc[0] else "")
            )
        row += ["yes" if v.effective else "no", "yes" if v.masked else "no"]
        rows.append(row)
    return Table(
        title=f"Source effect: paired difference against the control source ({control})",
        note=f"Each cell: test accuracy from the source minus from {control} (percentage points), "
        "mean ± 95% CI over the episodes both ran; * when the CI excludes 0. effective: full "
        "fine-tuning from the source is significantly better than from the control; masked: a "
        "frozen-feature method (linear, centroid) shows a significant effect, either way, and "
        "full fine-tuning does not.",
        columns=["target, k, source", *methods, "effective", "masked"],
        cells=rows,
        data=effect.merge(verdict, on=["target", "k", "source"]),
    )


def plot_source_effect(df: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Test accuracy against k, a panel per (target, method), a line per source (95% CI bars)."""
    targets = sorted(set(df.target))
    methods = list(dict.fromkeys(df.sort_values("method").method))
    sources = sorted(set(df.source))
    styles = method_styles(sources)
    fig, axes = plt.subplots(
        len(targets),
        len(methods),
        figsize=(2.9 * len(methods) + 0.8, 2.5 * len(targets) + 0.6),
        squeeze=False,
    )
    for i, target in enumerate(targets):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            for source in sources:
                g = df[(df.target == target) & (df.method == method) & (df.source == source)]
                if g.empty:
                    continue
                stats = [(k, *mean_ci(g[g.k == k].test_acc.to_numpy() * 100)) for k in sorted(set(g.k))]
                st = styles[source]
                ax.errorbar(
                    [s[0] for s in stats],
                    [s[1] for s in stats],
                    yerr=[0.0 if pd.isna(s[2]) else s[2] for s in stats],
                    color=st["color"],
                    marker=st["marker"],
                    linestyle=st["linestyle"],
                    capsize=2,
                    label=source,
                )
            ax.set_title(f"{target}: {method}")
            ax.set_xlabel("k (shots per class)")
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
    return save_with_top_legend(fig, axes[0][0], out_stem)


def _ks(ks: Any) -> str:
    return ", ".join(str(int(k)) for k in ks)


def findings_markdown(verdict: pd.DataFrame, cka_rows: Sequence[Mapping[str, Any]], control: str) -> str:
    """The study's findings in a few sentences (the README's block), from the verdicts."""
    lines = []
    for target, g in verdict.groupby("target", sort=True):
        parts = []
        for source, s in g.groupby("source", sort=True):
            eff = [int(k) for k in s[s.effective].k]
            text = f"`{source}` is effective at k = {_ks(eff)}" if eff else f"`{source}` is not effective"
            harm = s[s.harmful].k
            if len(harm):
                text += f"; transfer from it is significantly worse than from `{control}` at k = {_ks(harm)}"
            for word, sign in (("better", 1), ("worse", -1)):
                hidden = s[s.masked & (sign * s.frozen_effect > 0)]
                if len(hidden):
                    text += (
                        f"; its frozen features are significantly {word} than `{control}`'s at "
                        f"k = {_ks(hidden.k)}, a difference full fine-tuning hides"
                    )
            parts.append(text)
        cka = ", ".join(f"`{r['source']}` {r['cka']:.2f}" for r in cka_rows if r["target"] == target)
        lines.append(
            f"- **{target}** (against `{control}`): "
            + "; ".join(parts)
            + f". Feature CKA with the task: {cka}."
        )
    return "\n".join(lines) + "\n"


def write_source_effect(
    runs: Sequence[Path],
    cka_files: Sequence[Path],
    cells: Mapping[str, tuple[str, str]],
    control: str,
    out_dir: Path,
) -> pd.DataFrame:
    """Write the study's tables (``source_effect.{md,html,tex,csv}``), figure
    (``source_effect.{png,svg}``), ``metrics.json`` and ``findings.md`` into ``out_dir``; returns
    the effects' frame."""
    df = cell_frame(load_runs(list(runs)), cells)
    if control not in set(df.source):
        raise DataError(
            f"--control: expected a source with runs, found '{control}' (sources {sorted(set(df.source))})"
        )
    cka = {}
    for path in cka_files:
        content = read_json(path, what="CKA file")
        if not isinstance(content, dict) or not isinstance(content.get("cka"), dict):
            raise DataError(f"CKA file '{path}': expected an object with a 'cka' mapping, found none")
        if content.get("benchmark") not in cells:
            raise DataError(
                f"CKA file '{path}': expected the CKA of one of the study's cells {sorted(cells)}, "
                f"found benchmark {content.get('benchmark')!r}"
            )
        cka[content.get("benchmark")] = content
    effect = effects(df, control)
    verdict = verdicts(effect)
    tables = [accuracy_table(df, cka, cells), effect_table(effect, verdict, control)]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "source_effect"
    write_table_set(tables, stem, "tab:source_effect")
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        tables[1].data.to_csv(tmp, index=False, float_format="%.4f")
    plot_source_effect(df, stem)
    cka_rows = [
        {"target": cells[b][0], "source": cells[b][1], "cka": c["cka"]["features"], "layers": c["cka"]}
        for b, c in sorted(cka.items())
        if b in cells and "features" in c["cka"]
    ]
    write_json(
        out_dir / "metrics.json",
        {
            "control": control,
            "accuracy": json_records(tables[0].data),
            "effects": json_records(effect),
            "verdicts": json_records(verdict),
            "cka": cka_rows,
        },
    )
    write_text(out_dir / "findings.md", findings_markdown(verdict, cka_rows, control))
    return effect
