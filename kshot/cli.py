"""Command line: ``python -m kshot <command>``, one command per pipeline stage.

Every command takes the parameters as ``--params FILE`` (a YAML file such as ``params.yaml``) or
``--params-json STRING`` (what the Snakemake rules pass: only the sections the stage depends on, so
that Snakemake reruns a stage exactly when its own parameters change). Errors a user can cause are
printed as one line naming the field or file, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kshot.config import (
    BenchmarkConfig,
    DataConfig,
    EpisodeConfig,
    FinetuneConfig,
    SourceConfig,
    from_dict,
    method_spec,
    read_valid_params,
)
from kshot.errors import ConfigError, DataError, KshotError, unknown
from kshot.runtime import keep_freed_memory, numerics


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


def _device(raw: dict[str, Any]) -> torch.device:
    from kshot.finetune import resolve_device

    return resolve_device(raw.get("device", "auto"))


def cmd_acquire(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.data.datasets import acquire

    acquire(args.dataset, from_dict(DataConfig, raw.get("data"), "data"), args.out)


def cmd_prepare_source(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.data.prepare import prepare_source

    src = _named(raw, "sources", args.source, SourceConfig)
    data = from_dict(DataConfig, raw.get("data"), "data")
    prepare_source(args.source, src, data, Path(args.raw), Path(args.out), raw.get("seed", 0))


def cmd_prepare_target(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.data.prepare import prepare_target, source_geometry

    bench = _named(raw, "benchmarks", args.benchmark, BenchmarkConfig)
    src = _named(raw, "sources", bench.source, SourceConfig)
    data = from_dict(DataConfig, raw.get("data"), "data")
    prepare_target(args.benchmark, bench, source_geometry(src, data), data, Path(args.raw), Path(args.out))


def cmd_episodes(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.data.prepare import check_target_of, load_prepared
    from kshot.episodes import make_episodes
    from kshot.io import write_json

    cfg = from_dict(EpisodeConfig, raw.get("episodes"), "episodes")
    data = load_prepared(Path(args.target), ("pool_y", "test_y", "meta"))
    check_target_of(Path(args.target), data["meta"], args.benchmark)
    eps = make_episodes(data["pool_y"], data["test_y"], args.k, cfg, raw.get("seed", 0), args.benchmark)
    write_json(args.out, eps)


def cmd_pretrain(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.data.prepare import load_prepared
    from kshot.io import write_json
    from kshot.pretrain import pretrain, save_checkpoint

    src = _named(raw, "sources", args.source, SourceConfig)
    data = load_prepared(Path(args.data), ("train_x", "train_y", "test_x", "test_y"))
    # the recipe's thread count unless given by hand: on CPU it decides the float rounding
    threads = args.threads or src.threads
    torch.set_num_threads(threads)
    device = _device(raw)
    start = time.perf_counter()
    model, metrics = pretrain(
        src,
        data["train_x"],
        data["train_y"],
        data["test_x"],
        data["test_y"],
        raw.get("seed", 0),
        device,
    )
    metrics["numerics"] = numerics(device, threads)
    save_checkpoint(Path(args.out), model, src, int(data["train_x"].shape[-1]), metrics)
    write_json(args.metrics, {"source": args.source, "backbone": src.backbone, **metrics})
    # the wall time goes to the log alone: the checkpoint and its metrics are the same bytes on
    # every run with the same params (and so are the activations and groups that hash it)
    print(f"pretrained '{args.source}' in {time.perf_counter() - start:.1f} s: {args.out}")


def cmd_finetune(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.runner import run_episodes

    methods = raw.get("methods") or {}
    if args.method not in methods:
        raise unknown("methods", args.method, methods)
    artifacts: dict[str, Any] = {}
    if args.search:
        artifacts["search_counts"] = _search_counts(args.search)
    run_episodes(
        benchmark=args.benchmark,
        method_name=args.method,
        spec=method_spec(args.method, methods[args.method]),
        finetune=from_dict(FinetuneConfig, raw.get("finetune"), "finetune"),
        k=args.k,
        checkpoint=Path(args.checkpoint),
        target=Path(args.target),
        episodes=Path(args.episodes),
        out_dir=Path(args.out_dir),
        seed=raw.get("seed", 0),
        device=_device(raw),
        artifacts=artifacts,
        groups=Path(args.groups) if args.groups else None,
    )


def _search_counts(path: str) -> dict[str, Any]:
    """The counts per layer a search chose (its result JSON's ``chosen_counts``)."""
    from kshot.io import read_json

    result = read_json(path, what="search result")
    if not isinstance(result.get("chosen_counts"), dict):
        raise DataError(
            f"search result '{path}': expected a 'chosen_counts' mapping (rerun the search "
            f"stage), found keys {sorted(result)}"
        )
    return result["chosen_counts"]


def _episodes_file(args: argparse.Namespace, meta: dict[str, Any], k: int | None) -> dict[str, Any]:
    """The episodes file ``args.episodes``, checked to hold the episodes of ``args.benchmark`` and
    ``k`` (any k for ``None``) on the prepared target whose ``meta`` is given."""
    from kshot.data.prepare import check_target_of
    from kshot.episodes import read_episodes

    check_target_of(Path(args.target), meta, args.benchmark)
    return read_episodes(args.episodes, args.benchmark, k, meta)


def _activation_provenance(
    args: argparse.Namespace, raw: dict[str, Any], ckpt_sha: str, meta: dict, k: int, tag: str
) -> dict[str, Any]:
    """What the activation file of this command's inputs must have been made from."""
    from kshot.activations import made_from

    return made_from(ckpt_sha, meta["sha256"], raw.get("seed", 0), args.benchmark, k, tag)


def cmd_activations(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.activations import ActivationSpec, episode_activations
    from kshot.data.datasets import sha256
    from kshot.data.prepare import load_prepared
    from kshot.io import save_tensors
    from kshot.pretrain import load_checkpoint
    from kshot.runner import check_geometry

    spec = ActivationSpec.from_tag(args.tag)
    data = load_prepared(Path(args.target), ("pool_x", "meta"))
    check_geometry(Path(args.checkpoint), Path(args.target), data["meta"])
    ep_file = _episodes_file(args, data["meta"], args.k)
    model, _ = load_checkpoint(Path(args.checkpoint))
    device = _device(raw)
    ckpt_sha = sha256(Path(args.checkpoint))
    provenance = _activation_provenance(args, raw, ckpt_sha, data["meta"], args.k, spec.tag)
    content = episode_activations(
        model.to(device), ep_file, data["pool_x"], spec, model.groupable(), device, provenance
    )
    save_tensors(args.out, content)


def cmd_group(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    from kshot.activations import read_activations
    from kshot.data.datasets import sha256
    from kshot.data.prepare import load_prepared
    from kshot.episodes import role_seed
    from kshot.io import save_tensors, write_json
    from kshot.methods import METHODS, EpisodeData
    from kshot.methods.grouped import GROUPED_KINDS, groups_made_from, layer_sizes, make_groups
    from kshot.pretrain import load_checkpoint
    from kshot.runner import select

    methods = raw.get("methods") or {}
    if args.method not in methods:
        raise unknown("methods", args.method, methods)
    spec = method_spec(args.method, methods[args.method])
    if spec.kind not in GROUPED_KINDS:
        raise ConfigError(
            f"methods.{args.method}.kind: the group stage expected a grouped kind "
            f"{sorted(GROUPED_KINDS)}, found '{spec.kind}'"
        )
    cls = METHODS[spec.kind]
    method = cls(cls.parse_options(spec.options, f"methods.{args.method}"), FinetuneConfig(), args.method)
    artifacts = {"search_counts": _search_counts(args.search)} if args.search else {}
    data = load_prepared(Path(args.target), ("pool_x", "pool_y", "meta"))
    ep_file = _episodes_file(args, data["meta"], args.k)
    model, _ = load_checkpoint(Path(args.checkpoint))
    device = _device(raw)
    entries = ep_file.get("eval") or []
    episodes = []
    for e in entries:
        # what a grouping may use of an episode: its support images, seed and the searched counts
        support = select(data["pool_x"], data["pool_y"], e["support"])
        empty = (support[0][:0], support[1][:0])
        ep_seed = role_seed(raw.get("seed", 0), args.benchmark, "eval", args.k, int(e["id"]))
        n_classes = int(ep_file["n_classes"])
        episodes.append((e, EpisodeData(model, support, empty, empty, n_classes, ep_seed, device, artifacts)))
    tag = method.options.activation_spec.tag
    sizes = layer_sizes(model, model.groupable())
    ckpt_sha = sha256(Path(args.checkpoint))
    provenance = _activation_provenance(args, raw, ckpt_sha, data["meta"], args.k, tag)
    patterns = read_activations(args.activations, provenance, "eval", entries, sizes)
    made = groups_made_from(method, args.method, ckpt_sha)
    content, summary = make_groups(method, model, episodes, patterns, made)
    save_tensors(args.out, content)
    write_json(args.summary, {"benchmark": args.benchmark, "k": args.k, **summary})


def cmd_search(args: argparse.Namespace, raw: dict[str, Any]) -> None:
    import dataclasses

    from kshot.data.prepare import load_prepared
    from kshot.io import write_json
    from kshot.pretrain import load_checkpoint
    from kshot.search import SearchConfig, search_episodes, search_group_counts

    cfg = from_dict(SearchConfig, raw.get("search"), "search")
    if args.strategy:
        cfg = dataclasses.replace(cfg, strategy=args.strategy)
    finetune = from_dict(FinetuneConfig, raw.get("finetune"), "finetune")
    data = load_prepared(Path(args.target), ("pool_x", "pool_y", "meta"))
    ep_file = _episodes_file(args, data["meta"], None)
    seed = raw.get("seed", 0)
    where = f"episodes file '{args.episodes}'"
    episodes, select = (
        search_episodes(ep_file, data["pool_x"], data["pool_y"], args.benchmark, seed, role, where)
        for role in ("search", "select")
    )
    model, _ = load_checkpoint(Path(args.checkpoint))
    patterns = None
    if args.activations:
        from kshot.activations import read_activations
        from kshot.data.datasets import sha256
        from kshot.methods.grouped import layer_sizes

        k, tag = int(ep_file["k"]), cfg.activation_spec.tag
        ckpt_sha = sha256(Path(args.checkpoint))
        provenance = _activation_provenance(args, raw, ckpt_sha, data["meta"], k, tag)
        sizes = layer_sizes(model, model.groupable())
        patterns = {
            role: read_activations(args.activations, provenance, role, ep_file.get(role) or [], sizes)
            for role in ("search", "select")
        }
    trace = search_group_counts(
        model, episodes, int(ep_file["n_classes"]), cfg, finetune, _device(raw), seed, select, patterns
    )
    write_json(args.out, trace.to_dict())


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
    if (args.kind == "replicates") != bool(replicate_of):
        raise ConfigError(
            f"--replicate-of: expected it with --kind replicates and only then, found kind {args.kind!r} "
            f"and {len(replicate_of)} entries"
        )
    write_comparisons([Path(p) for p in args.runs], pairs, Path(args.out_stem), args.kind, replicate_of)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kshot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        group = p.add_mutually_exclusive_group()
        group.add_argument("--params", default="params.yaml", help="params YAML file")
        group.add_argument("--params-json", help="params as a JSON string (used by the rules)")
        p.add_argument("--threads", type=_threads, default=None, help="torch CPU threads")
        p.set_defaults(fn=fn, needs_params=True)
        return p

    p = add("acquire", cmd_acquire, "fetch a dataset's raw files")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p = add("prepare-source", cmd_prepare_source, "source train/test tensors")
    p.add_argument("--source", required=True)
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p = add("prepare-target", cmd_prepare_target, "target pool/test tensors")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p = add("episodes", cmd_episodes, "seeded k-shot episodes")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--out", required=True)
    p = add("pretrain", cmd_pretrain, "train the source network")
    p.add_argument("--source", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    p = add("finetune", cmd_finetune, "run a method on every episode")
    for name in ("benchmark", "method", "checkpoint", "target", "episodes", "out-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--search", default=None, help="search result JSON (grouped_rl)")
    p.add_argument("--groups", default=None, help="the group stage's file (grouped methods)")
    p = add("activations", cmd_activations, "neuron x image activation patterns of every episode")
    for name in ("benchmark", "checkpoint", "target", "episodes", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--tag", default="support", help="support | support+pool<N>, optionally -raw")
    p = add("group", cmd_group, "a grouped method's neuron groups on every evaluation episode")
    for name in ("benchmark", "method", "checkpoint", "target", "episodes", "activations", "out", "summary"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--search", default=None, help="search result JSON (grouped_rl)")
    p = add("search", cmd_search, "search the group count per layer (RL or random)")
    for name in ("benchmark", "checkpoint", "target", "episodes", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--strategy", choices=["reinforce", "random"], default=None)
    p.add_argument("--activations", default=None, help="the activation stage's file")
    p = add("compare", cmd_compare, "a table of paired differences (ablation, regime or replicate study)")
    p.add_argument("--runs", nargs="+", required=True, help="metrics.json files")
    p.add_argument("--pairs", nargs="+", required=True, help="comparisons as a:b (a - b)")
    p.add_argument("--kind", choices=["ablation", "regime", "replicates"], required=True)
    p.add_argument(
        "--replicate-of",
        nargs="+",
        help="replicates: each run's benchmark=base:seed (base benchmark, source seed)",
    )
    p.add_argument("--out-stem", required=True, help="output path without suffix")
    p.set_defaults(needs_params=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # malloc reuses freed feature maps: see kshot.runtime
    # SIGTERM (Snakemake cancelling a job) unwinds like an exception, so temporary files are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        raw = _raw_params(args) if args.needs_params else {}
        if not isinstance(raw, dict):
            raise ConfigError(f"params: expected a mapping at the top level, found {raw!r}")
        args.fn(args, raw)
    except KshotError as err:
        message = " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"kshot {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0
