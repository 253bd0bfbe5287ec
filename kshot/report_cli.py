"""Report commands: ``python -m kshot.report_cli <command>`` (aggregate, groups, search, notebook).

They read pipeline outputs only and write what a person reads under ``reports/``. Errors a user can
cause print one line naming the file or field and exit with status 2, as :mod:`kshot.cli` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kshot.errors import KshotError


def cmd_aggregate(args: argparse.Namespace) -> None:
    from kshot.report import write_results

    write_results(
        [Path(p) for p in args.runs],
        [Path(p) for p in args.sources],
        Path(args.tables_dir),
        Path(args.figures_dir),
        baseline=args.baseline,
        metrics_path=Path(args.metrics) if args.metrics else None,
        plots_dir=Path(args.plots_dir) if args.plots_dir else None,
        episodes=[Path(p) for p in args.episodes],
    )


def cmd_groups(args: argparse.Namespace) -> None:
    from kshot.report import write_group_figures

    groups = float(args.groups) if "." in args.groups else int(args.groups)
    write_group_figures(
        Path(args.checkpoint),
        Path(args.target),
        args.benchmark,
        Path(args.out_dir),
        groups=groups,
        filter_layer=args.filter_layer,
        embed_layer=args.embed_layer,
        n_images=args.images,
        seed=args.seed,
    )


def cmd_search(args: argparse.Namespace) -> None:
    from kshot.report import write_search_report

    write_search_report(
        [Path(p) for p in args.traces], args.labels, Path(args.tables_dir), Path(args.figures_dir)
    )


def cmd_notebook(args: argparse.Namespace) -> None:
    from kshot.notebook import execute_notebook

    params = dict(p.split("=", 1) for p in args.param)
    execute_notebook(
        Path(args.template),
        Path(args.out),
        params,
        cwd=Path(args.cwd),
        out_html=Path(args.html) if args.html else None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kshot.report_cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("aggregate", help="tables, figures, metrics and plot data from run metrics")
    p.add_argument("--runs", nargs="+", required=True, help="run metrics.json files")
    p.add_argument("--sources", nargs="*", default=[], help="source metrics.json files")
    p.add_argument("--episodes", nargs="*", default=[], help="episode files (chance levels)")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--metrics", default=None, help="headline metrics JSON to write")
    p.add_argument("--plots-dir", default=None, help="folder for plot-ready CSVs")
    p.add_argument("--baseline", default="full")
    p.set_defaults(fn=cmd_aggregate)
    p = sub.add_parser("groups", help="Fig. 1 view (filters by group) and neuron embedding")
    for name in ("checkpoint", "target", "benchmark", "out-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--groups", default="0.25", help="count (int) or fraction of neurons (float)")
    p.add_argument("--filter-layer", default=None)
    p.add_argument("--embed-layer", default=None)
    p.add_argument("--images", type=int, default=500, help="unlabeled target images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_groups)
    p = sub.add_parser("search", help="search table and figures from SearchTrace JSON files")
    p.add_argument("--traces", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True, help="one per trace, e.g. 'fashion k=5'")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)
    p.set_defaults(fn=cmd_search)
    p = sub.add_parser("notebook", help="execute the analysis notebook on pipeline outputs")
    p.add_argument("--template", required=True)
    p.add_argument("--out", required=True, help="executed .ipynb")
    p.add_argument("--html", default=None, help="HTML export")
    p.add_argument("--cwd", default=".", help="folder the notebook runs in (the pipeline's root)")
    p.add_argument("--param", action="append", default=[], help="NAME=VALUE (a string), repeatable")
    p.set_defaults(fn=cmd_notebook)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except KshotError as err:
        print(f"kshot {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
