"""Command line: ``kshot <command>`` (or ``python -m kshot <command>``), one command per pipeline
stage and per report.

The stage commands take the parameters as ``--params FILE`` (a YAML file such as ``params.yaml``,
validated as a whole) or ``--params-json STRING`` (what the Snakemake rules pass: only the sections
the stage depends on, so that Snakemake reruns a stage exactly when its own parameters change).
Each command checks its sections and calls one function of :mod:`kshot.runner` (stages) or of the
report modules. Errors a user can cause are printed as one line naming the field or file, and the
command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from kshot import runner
from kshot.config import (
    ActivationSpec,
    BenchmarkConfig,
    DataConfig,
    EpisodeConfig,
    FinetuneConfig,
    MethodSpec,
    SearchConfig,
    SourceConfig,
    SourceEffectConfig,
    from_dict,
)
from kshot.data.datasets import acquire
from kshot.errors import ConfigError, DataError, KshotError, unknown
from kshot.finetune import resolve_device
from kshot.io import read_json, write_text
from kshot.jobs import acquire_entry
from kshot.params import parse_method, read_valid_params
from kshot.runtime import keep_freed_memory

# The report commands import pandas, matplotlib and nbclient in their own functions: the stage
# commands, one process per Snakemake job, would only pay for loading them at start-up.


def _raw_params(args: argparse.Namespace) -> dict[str, Any]:
    if args.params_json is not None:
        try:
            return json.loads(args.params_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--params-json: expected a JSON object, found invalid JSON ({err})") from err
    raw, _ = read_valid_params(args.params)  # a whole file is validated as a whole
    return raw


def _threads(text: str) -> int:
    """``--threads``: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer number of threads, found {text!r}")
    return value


def _named(raw: dict[str, Any], section: str, name: str, cls: type) -> Any:
    table = raw.get(section) or {}
    if name not in table:
        raise unknown(section, name, table)
    return from_dict(cls, table[name], f"{section}.{name}")


def _section(raw: dict[str, Any], section: str, cls: type) -> Any:
    return from_dict(cls, raw.get(section), section)


def _method(raw: dict[str, Any], name: str) -> MethodSpec:
    methods = raw.get("methods") or {}
    if name not in methods:
        raise unknown("methods", name, methods)
    return parse_method(name, methods[name])


def _device(raw: dict[str, Any]) -> torch.device:
    return resolve_device(raw.get("device", "auto"))


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _inputs(args: argparse.Namespace) -> runner.StageInputs:
    return runner.StageInputs(Path(args.checkpoint), Path(args.target), Path(args.episodes))


def cmd_acquire(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    data = _section(raw, "data", DataConfig)
    acquire(args.dataset, data, args.out, source=acquire_entry(data, args.dataset))


def cmd_prepare_source(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    src = _named(raw, "sources", args.source, SourceConfig)
    data = _section(raw, "data", DataConfig)
    runner.prepare_source_stage(args.source, src, data, Path(args.raw), Path(args.out), raw.get("seed", 0))


def cmd_prepare_target(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    bench = _named(raw, "benchmarks", args.benchmark, BenchmarkConfig)
    src = _named(raw, "sources", bench.source, SourceConfig)
    data = _section(raw, "data", DataConfig)
    runner.prepare_target_stage(args.benchmark, bench, src, data, Path(args.raw), Path(args.out))


def cmd_episodes(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    cfg = _section(raw, "episodes", EpisodeConfig)
    runner.episodes_stage(
        args.benchmark,
        args.k,
        cfg,
        raw.get("seed", 0),
        Path(args.target),
        Path(args.out),
        raw.get("draw_as"),
        raw.get("test_field", "episodes.test_per_class"),
    )


def cmd_pretrain(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    src = _named(raw, "sources", args.source, SourceConfig)
    # the recipe's thread count unless given by hand: on CPU it decides the float rounding
    seconds = runner.pretrain_stage(
        args.source,
        src,
        raw.get("seed", 0),
        Path(args.data),
        Path(args.out),
        Path(args.metrics),
        _device(raw),
        args.threads or src.threads,
    )
    print(f"pretrained '{args.source}' in {seconds:.1f} s: {args.out}")


def cmd_activations(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    runner.activations_stage(
        args.benchmark,
        args.k,
        ActivationSpec.from_tag(args.tag),
        raw.get("seed", 0),
        _inputs(args),
        Path(args.out),
        _device(raw),
    )


def cmd_group(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    runner.group_stage(
        args.benchmark,
        args.k,
        args.method,
        _method(raw, args.method),
        raw.get("seed", 0),
        _inputs(args),
        Path(args.activations),
        Path(args.out),
        Path(args.summary),
        _device(raw),
        search=_path(args.search),
    )


def cmd_search(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    section = dict(raw.get("search") or {})
    if args.strategy:
        section["strategy"] = args.strategy
    runner.search_stage(
        args.benchmark,
        from_dict(SearchConfig, section, "search"),
        _section(raw, "finetune", FinetuneConfig),
        raw.get("seed", 0),
        _inputs(args),
        Path(args.out),
        _device(raw),
        activations=_path(args.activations),
    )


def cmd_finetune(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    summary = runner.run_episodes(
        benchmark=args.benchmark,
        method_name=args.method,
        spec=_method(raw, args.method),
        finetune=_section(raw, "finetune", FinetuneConfig),
        k=args.k,
        inputs=_inputs(args),
        out_dir=Path(args.out_dir),
        seed=raw.get("seed", 0),
        device=_device(raw),
        groups=_path(args.groups),
        search=_path(args.search),
        tuning=_path(args.tuning),
        artifacts=None if args.alignment_every is None else {"alignment_every": args.alignment_every},
    )
    diverged = [ep["episode"] for ep in summary["episodes"] if ep.get("diverged_step") is not None]
    if diverged:
        args.warn(
            f"{args.method} k={args.k} on {args.benchmark} diverged (a non-finite loss) on "
            f"{len(diverged)} of {len(summary['episodes'])} episodes; their accuracy is that of the "
            "last state the validation kept, and the results table says so"
        )


def cmd_tune(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    runner.tune_stage(
        args.benchmark,
        args.method,
        _method(raw, args.method),
        _section(raw, "finetune", FinetuneConfig),
        _section(raw, "search", SearchConfig),
        raw.get("seed", 0),
        args.k,
        _inputs(args),
        Path(args.out),
        _device(raw),
    )


def cmd_cka(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    study = _section(raw, "source_effect", SourceEffectConfig)
    runner.cka_stage(
        args.benchmark,
        study.cka_images,
        raw.get("seed", 0),
        Path(args.checkpoint),
        Path(args.target),
        Path(args.out),
        _device(raw),
    )


def _cells(items: list[str]) -> dict[str, tuple[str, str]]:
    """``benchmark=target:source`` entries of ``--cells``."""
    cells = {}
    for item in items:
        bench, _, rest = item.partition("=")
        target, _, source = rest.partition(":")
        if not (bench and target and source):
            raise ConfigError(f"--cells: expected entries written benchmark=target:source, found {item!r}")
        cells[bench] = (target, source)
    return cells


def cmd_source_effect(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.source_effect import write_source_effect

    write_source_effect(
        [Path(p) for p in args.runs],
        [Path(p) for p in args.cka],
        _cells(args.cells),
        args.control,
        Path(args.out_dir),
    )


def cmd_alignment_report(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.alignment_report import write_alignment_report

    write_alignment_report([Path(p) for p in args.runs], args.baseline, Path(args.out_dir))


def cmd_compare(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.regime import write_comparisons

    bad = [p for p in args.pairs if p.count(":") != 1 or "" in p.split(":")]
    if bad:
        raise ConfigError(f"--pairs: expected comparisons written a:b (a − b), found {bad}")
    pairs = [tuple(p.split(":")) for p in args.pairs]
    replicate_of = {}
    for item in args.replicate_of or []:
        bench, _, rest = item.partition("=")
        base, _, seed = rest.partition(":")
        if not (bench and base and seed.isdigit()):
            raise ConfigError(f"--replicate-of: expected entries written benchmark=base:seed, found {item!r}")
        replicate_of[bench] = (base, int(seed))
    backbone_of = dict(item.partition("=")[::2] for item in args.backbone_of or [])
    bad = [item for item in args.backbone_of or [] if "" in item.partition("=")[::2]]
    if bad:
        raise ConfigError(f"--backbone-of: expected entries written benchmark=backbone, found {bad}")
    if (args.kind == "replicates") != bool(replicate_of):
        raise ConfigError(
            f"--replicate-of: expected it with --kind replicates and only then, found kind {args.kind!r} "
            f"and {len(replicate_of)} entries"
        )
    write_comparisons(
        [Path(p) for p in args.runs],
        pairs,
        Path(args.out_stem),
        args.kind,
        replicate_of,
        _path(args.figure),
        _path(args.findings),
        backbone_of,
    )


def cmd_aggregate(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.report import target_notes, write_results

    try:
        targets = json.loads(args.targets) if args.targets else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"--targets: expected a JSON object, found invalid JSON ({err})") from err
    if not isinstance(targets, dict):
        raise ConfigError(f"--targets: expected a JSON object, found {type(targets).__name__}")
    write_results(
        [Path(p) for p in args.runs],
        [Path(p) for p in args.sources],
        Path(args.tables_dir),
        Path(args.figures_dir),
        baseline=args.baseline,
        metrics_path=_path(args.metrics),
        plots_dir=_path(args.plots_dir),
        by_cell_path=_path(args.metrics_by_cell),
        episodes=[Path(p) for p in args.episodes],
        targets=target_notes(targets),
        tuned=args.tuned,
    )


def _groups(text: str) -> int | float:
    """``--groups``: a count (an integer) or a fraction of the neurons (a number with a point)."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise ConfigError(
            "--groups: expected a group count (e.g. 32) or a fraction of the neurons (e.g. 0.25), "
            f"found {text!r}"
        ) from None


def cmd_group_figures(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.report import write_group_figures

    groups = _groups(args.groups)
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


def cmd_maps(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.maps_report import write_activation_maps

    write_activation_maps(
        Path(args.checkpoint),
        Path(args.target),
        args.benchmark,
        Path(args.out_dir),
        layer=args.layer,
        n_images=args.images,
        groups=_groups(args.groups),
        cubes=args.cubes,
        overlap=args.overlap,
        seed=args.seed,
    )


def cmd_maps_findings(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.maps_report import write_maps_findings

    write_maps_findings([Path(p) for p in args.summaries], Path(args.out))


def cmd_search_report(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.report import write_search_report

    write_search_report(
        [Path(p) for p in args.traces], args.labels, Path(args.tables_dir), Path(args.figures_dir)
    )


def cmd_notebook(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.notebook import execute_notebook

    bad = [p for p in args.param if "=" not in p]
    if bad:
        raise ConfigError(f"--param: expected NAME=VALUE, found {bad}")
    execute_notebook(
        Path(args.template),
        Path(args.out),
        dict(p.split("=", 1) for p in args.param),
        cwd=Path(args.cwd),
        out_html=_path(args.html),
    )


def cmd_readme(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.tables import with_findings, with_headline, with_study

    readme = Path(args.readme)
    if not readme.is_file():
        raise DataError(f"--readme '{readme}': expected an existing file, found nothing")

    def metrics_of(path: str, flag: str) -> dict[str, Any]:
        metrics = read_json(path, flag)
        if not isinstance(metrics, dict):
            raise DataError(f"{flag} '{path}': expected a JSON object, found {type(metrics).__name__}")
        return metrics

    text = readme.read_text()
    new = with_headline(text, metrics_of(args.metrics, "--metrics"), str(readme))
    studies = (
        ("peers", args.peers_metrics),
        ("resnet", args.resnet_metrics),
        ("resnet_peers", args.resnet_peers_metrics),
    )
    for study, path in studies:
        if path:
            new = with_study(new, metrics_of(path, f"--{study}-metrics"), str(readme), study)
    if args.findings:
        findings = {}
        for item in args.findings:
            study, _, path = item.partition("=")
            if not (study and path and Path(path).is_file()):
                raise DataError(f"--findings: expected study=<an existing findings.md>, found {item!r}")
            findings[study] = (Path(path).read_text(), path)
        new = with_findings(new, findings, str(readme))
    if new != text:
        write_text(readme, new)
    print(f"{readme}: {'updated' if new != text else 'unchanged'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kshot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, fn, help_: str, required: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        group = p.add_mutually_exclusive_group()
        group.add_argument("--params", default="params.yaml", help="params YAML file")
        group.add_argument("--params-json", help="params as a JSON string (used by the rules)")
        p.add_argument("--threads", type=_threads, default=None, help="torch CPU threads")
        p.add_argument(
            "--log", default=None, help="write the output here; errors and warnings also to the console"
        )
        for arg in required:
            p.add_argument(f"--{arg}", required=True)
        p.set_defaults(fn=fn, needs_params=True)
        return p

    def report(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "--log", default=None, help="write the output here; errors and warnings also to the console"
        )
        p.set_defaults(fn=fn, needs_params=False, threads=None)
        return p

    stage("acquire", cmd_acquire, "fetch a dataset's raw files", ("dataset", "out"))
    stage("prepare-source", cmd_prepare_source, "source train/test tensors", ("source", "raw", "out"))
    stage("prepare-target", cmd_prepare_target, "target pool/test tensors", ("benchmark", "raw", "out"))
    p = stage("episodes", cmd_episodes, "seeded k-shot episodes", ("benchmark", "target", "out"))
    p.add_argument("--k", type=int, required=True)
    stage("pretrain", cmd_pretrain, "train the source network", ("source", "data", "out", "metrics"))
    p = stage(
        "finetune",
        cmd_finetune,
        "run a method on every episode",
        ("benchmark", "method", "checkpoint", "target", "episodes", "out-dir"),
    )
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--search", default=None, help="search result JSON (grouped_rl)")
    p.add_argument("--groups", default=None, help="the group stage's file (grouped methods)")
    p.add_argument("--tuning", default=None, help="the tune stage's file: run its chosen options")
    p.add_argument(
        "--alignment-every",
        type=int,
        default=None,
        help="log the layers' representation/weight/gradient alignment every N steps (kshot.alignment)",
    )
    p = stage(
        "tune",
        cmd_tune,
        "choose a method's options from its tune grid on validation data",
        ("benchmark", "method", "checkpoint", "target", "episodes", "out"),
    )
    p.add_argument("--k", type=int, required=True)
    stage(
        "cka",
        cmd_cka,
        "linear CKA of the source's features with the target task (source-effect study)",
        ("benchmark", "checkpoint", "target", "out"),
    )
    p = stage(
        "activations",
        cmd_activations,
        "neuron x image activation patterns of every episode",
        ("benchmark", "checkpoint", "target", "episodes", "out"),
    )
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--tag", default="support", help="support | support+pool<N>, optionally -raw")
    p = stage(
        "group",
        cmd_group,
        "a grouped method's neuron groups on every evaluation episode",
        ("benchmark", "method", "checkpoint", "target", "episodes", "activations", "out", "summary"),
    )
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--search", default=None, help="search result JSON (grouped_rl)")
    p = stage(
        "search",
        cmd_search,
        "search the group count per layer (RL or random)",
        ("benchmark", "checkpoint", "target", "episodes", "out"),
    )
    p.add_argument("--strategy", choices=["reinforce", "random"], default=None)
    p.add_argument("--activations", default=None, help="the activation stage's file")

    p = report("compare", cmd_compare, "a table of paired differences (ablation, regime or replicate study)")
    p.add_argument("--runs", nargs="+", required=True, help="metrics.json files")
    p.add_argument("--pairs", nargs="+", required=True, help="comparisons as a:b (a - b)")
    p.add_argument("--kind", choices=["ablation", "regime", "replicates"], required=True)
    p.add_argument(
        "--replicate-of",
        nargs="+",
        help="replicates: each run's benchmark=base:seed (base benchmark, source seed)",
    )
    p.add_argument("--out-stem", required=True, help="output path without suffix")
    p.add_argument("--figure", default=None, help="forest plot path without suffix (.png and .svg)")
    p.add_argument(
        "--findings", default=None, help="where to write the findings (the README's studies block)"
    )
    p.add_argument(
        "--backbone-of",
        nargs="+",
        help="each benchmark=its source's backbone: findings give each backbone's cells apart",
    )
    p = report("source-effect", cmd_source_effect, "the source-effect study's tables, figure and findings")
    p.add_argument("--runs", nargs="+", required=True, help="run metrics.json files")
    p.add_argument("--cka", nargs="+", required=True, help="the cka stage's files")
    p.add_argument("--cells", nargs="+", required=True, help="each run's benchmark=target:source")
    p.add_argument("--control", required=True, help="the source the others are compared with")
    p.add_argument("--out-dir", required=True)
    p = report("alignment-report", cmd_alignment_report, "the alignment study's figure, tables and findings")
    p.add_argument("--runs", nargs="+", required=True, help="run metrics.json files with alignment logs")
    p.add_argument("--baseline", default="full", help="the method the others are compared with")
    p.add_argument("--out-dir", required=True)
    p = report("aggregate", cmd_aggregate, "tables, figures, metrics and plot data from run metrics")
    p.add_argument("--runs", nargs="+", required=True, help="run metrics.json files")
    p.add_argument("--sources", nargs="*", default=[], help="source metrics.json files")
    p.add_argument("--episodes", nargs="*", default=[], help="episode files (chance levels)")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--metrics", default=None, help="compact metrics JSON to write (dvc metrics show)")
    p.add_argument(
        "--metrics-by-cell",
        default=None,
        help="per-cell metrics JSON to write (default: metrics_by_cell.json beside --metrics)",
    )
    p.add_argument("--plots-dir", default=None, help="folder for plot-ready CSVs")
    p.add_argument("--baseline", default="full")
    p.add_argument(
        "--tuned",
        nargs="*",
        default=[],
        help="methods of the tuned block besides the <method>+tuned runs (searched, or nothing to tune)",
    )
    p.add_argument(
        "--targets",
        default=None,
        help='JSON: per benchmark {"dataset", "classes", "raw"} (its target classes, named in the caption)',
    )
    p = report("group-figures", cmd_group_figures, "Fig. 1 view (filters by group) and neuron embedding")
    for name in ("checkpoint", "target", "benchmark", "out-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--groups", default="0.25", help="count (int) or fraction of neurons (float)")
    p.add_argument("--filter-layer", default=None)
    p.add_argument("--embed-layer", default=None)
    p.add_argument("--images", type=int, default=500, help="unlabeled target images")
    p.add_argument("--seed", type=int, default=0)
    p = report("maps", cmd_maps, "Mapper graphs of one layer: target images and neurons by k-means group")
    for name in ("checkpoint", "target", "benchmark", "out-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--layer", default="last", help="a groupable layer, or 'last'")
    p.add_argument("--images", type=int, default=1000, help="target training images")
    p.add_argument("--groups", default="0.25", help="count (int) or fraction of neurons (float)")
    p.add_argument("--cubes", type=int, default=10, help="hypercubes per lens axis")
    p.add_argument("--overlap", type=float, default=0.5, help="hypercube overlap in (0, 1)")
    p.add_argument("--seed", type=int, default=0)
    p = report("maps-findings", cmd_maps_findings, "the activation-maps study's findings")
    p.add_argument("--summaries", nargs="+", required=True, help="the maps' <benchmark>.json files")
    p.add_argument("--out", required=True)
    p = report("search-report", cmd_search_report, "search table and figures from search files")
    p.add_argument("--traces", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True, help="one per trace, e.g. 'fashion k=5'")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)
    p = report("notebook", cmd_notebook, "execute the analysis notebook on pipeline outputs")
    p.add_argument("--template", required=True)
    p.add_argument("--out", required=True, help="executed .ipynb")
    p.add_argument("--html", default=None, help="HTML export")
    p.add_argument("--cwd", default=".", help="folder the notebook runs in (the pipeline's root)")
    p.add_argument("--param", action="append", default=[], help="NAME=VALUE (a string), repeatable")
    p = report(
        "readme",
        cmd_readme,
        "the README's headline tables (and the peers and ResNet-18 blocks) from the metrics",
    )
    p.add_argument(
        "--metrics", default="reports/metrics_by_cell.json", help="per-cell metrics JSON (aggregate's)"
    )
    p.add_argument(
        "--peers-metrics",
        default=None,
        help="the peers study's per-cell metrics JSON (reports/peers/metrics_by_cell.json), for its block",
    )
    p.add_argument(
        "--resnet-metrics",
        default=None,
        help="the ResNet-18 study's per-cell metrics (reports/resnet/metrics_by_cell.json), for its block",
    )
    p.add_argument(
        "--resnet-peers-metrics",
        default=None,
        help="the peers on ResNet-18's metrics (reports/resnet_peers/metrics_by_cell.json), for its block",
    )
    p.add_argument(
        "--findings",
        nargs="+",
        default=[],
        help="study=reports/<study>/findings.md for the studies' block "
        "(replicates, resnet_replicates, regime, sources, alignment, maps)",
    )
    p.add_argument("--readme", default="README.md", help="file with the headline markers, rewritten in place")
    return parser


def _to_log(path: Path):
    """Send this process's stdout and stderr to ``path`` (created with its folder); returns a
    stream to the console's stderr as it was before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return console


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # malloc reuses freed feature maps: see kshot.runtime
    # SIGTERM (Snakemake cancelling a job) unwinds like an exception, so temporary files are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = build_parser().parse_args(argv)
    console = _to_log(Path(args.log)) if args.log else None

    def say(line: str) -> None:
        """One line to stderr, and to the console too when stderr goes to a log."""
        print(line, file=sys.stderr, flush=True)
        if console is not None:
            print(line, file=console, flush=True)

    args.warn = lambda message: say(f"kshot {args.command}: warning: {message}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        raw = _raw_params(args) if args.needs_params else {}
        if not isinstance(raw, dict):
            raise ConfigError(f"params: expected a mapping at the top level, found {raw!r}")
        args.fn(args, raw)
    except KshotError as err:
        message = " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
        say(f"kshot {args.command}: error: {message}")
        return 2
    except Exception as err:  # a bug, not a user's error: the traceback goes to the log
        traceback.print_exc()
        if console is None:
            raise
        first = " ".join(str(err).split())[:300]
        say(f"kshot {args.command}: internal error {type(err).__name__}: {first} (traceback in {args.log})")
        return 1
    return 0
