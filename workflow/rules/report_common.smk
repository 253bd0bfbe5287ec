# Paths and target lists of the report rules (report.smk), kept apart from the rules.
import os

REPORT_FIG = "reports/figures"
REPORT_TAB = "reports/tables"
# the notebook is workflow source: found beside the Snakefile, whatever the working directory
# relative where the project is the working directory, so moving it reruns nothing
NOTEBOOK_TEMPLATE = os.path.join(workflow.basedir, "reports", "analysis.ipynb")
if not os.path.relpath(NOTEBOOK_TEMPLATE).startswith(".."):
    NOTEBOOK_TEMPLATE = os.path.relpath(NOTEBOOK_TEMPLATE)


def report_benchmarks():
    return PARAMS.run.benchmarks


def target_entries(benchmarks=None):
    """Per report benchmark (the default run's unless given), its target dataset, classes and
    acquired folder: the results tables name the target classes (kshot.report.target_notes).
    """
    return {
        b: {
            "dataset": target_dataset(b),
            "classes": list(entry("benchmarks", b).target_classes),
            "raw": raw_home(target_dataset(b)),
        }
        for b in benchmarks or report_benchmarks()
    }


def targets_json(benchmarks=None):
    return json.dumps(target_entries(benchmarks), sort_keys=True)


def target_raw_dirs(benchmarks=None):
    return sorted({t["raw"] for t in target_entries(benchmarks).values()})


def search_labels(traces=None):
    """One label per search trace (search_targets() unless given), e.g. "fashion k=5" (the
    strategy is read from the trace itself)."""
    from pathlib import PurePath

    labels = []
    for p in traces or search_targets():
        parts = PurePath(p).parts[-3:]
        labels.append(f"{parts[0]} k={parts[1].removeprefix('k')}")
    return labels


def report_targets():
    """Everything the report rules write that a full run should have (for final_outputs)."""
    out = [
        f"{REPORT_TAB}/results.md",
        f"{REPORT_TAB}/results.html",
        f"{REPORT_FIG}/accuracy_vs_k.png",
        f"{REPORT_FIG}/episode_differences.png",
        f"{REPORT_FIG}/forest.png",
        "reports/metrics.json",
        "reports/metrics_by_cell.json",
        "reports/analysis.html",
    ]
    out += expand(
        f"{REPORT_FIG}/groups/{{benchmark}}_filters.png", benchmark=report_benchmarks()
    )
    if search_targets():
        out += [
            f"{REPORT_TAB}/search.md",
            f"{REPORT_TAB}/search.html",
            f"{REPORT_FIG}/search_curves.png",
        ]
    return out
