"""Loading and whole-file validation of a params file: the one validator of kshot's parameters.

:mod:`kshot.config` types and checks each section. This module adds the checks that need the
registries, which sit above the config layer: dataset names (:data:`kshot.data.datasets.DATASETS`
and ``data.image_folders``), backbones (:data:`kshot.models.BACKBONES`) and method kinds
(:data:`kshot.methods.METHODS`), whose ``Options`` dataclass parses each method's options once,
here. The command line, the Snakefile and therefore ``dvc repro`` all validate through
:func:`params_from_dict`, so a wrong value gets the same one-line message from each.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from kshot.config import TUNED, MethodSpec, Params, SearchConfig, check_eval_every, from_dict
from kshot.data.datasets import DATASETS, local_dir_datasets
from kshot.errors import ConfigError, unknown, yaml_error
from kshot.methods import METHODS
from kshot.methods.base import TrainOverrides
from kshot.models import BACKBONES
from kshot.tuning import check_grid


def parse_method(name: str, spec: MethodSpec | Any) -> MethodSpec:
    """``methods.<name>`` (a :class:`MethodSpec` or its raw mapping) with its kind checked and its
    options parsed by the kind's ``Options`` dataclass."""
    where = f"methods.{name}"
    if not isinstance(spec, MethodSpec):
        spec = MethodSpec.from_raw(spec, where)
    if spec.kind not in METHODS:
        raise unknown(f"{where}.kind", spec.kind, METHODS)
    options = spec.options
    if not isinstance(options, METHODS[spec.kind].Options):
        options = METHODS[spec.kind].parse_options(options, where)
    return MethodSpec(kind=spec.kind, options=options, tune=spec.tune)


def check_registries(params: Params) -> Params:
    """``params`` with every name checked against the registries and every method's options
    parsed; raises :class:`ConfigError` naming the field."""
    datasets = set(DATASETS) | set(params.data.image_folders)
    local = local_dir_datasets()
    for name in params.data.local_dirs:
        if name not in local:
            raise unknown(f"data.local_dirs.{name}", name, local)
    for name, src in params.sources.items():
        if src.dataset not in datasets:
            raise unknown(f"sources.{name}.dataset", src.dataset, datasets)
        if src.backbone not in BACKBONES:
            raise unknown(f"sources.{name}.backbone", src.backbone, BACKBONES)
        loadable = [b for b, cls in BACKBONES.items() if hasattr(cls, "load_torchvision")]
        if src.pretrained is not None and src.backbone not in loadable:
            raise ConfigError(
                f"sources.{name}.pretrained: expected null for backbone '{src.backbone}' (weights "
                f"load into {loadable}), found {src.pretrained!r}"
            )
    for name, bench in params.benchmarks.items():
        if bench.target not in datasets:
            raise unknown(f"benchmarks.{name}.target", bench.target, datasets)
    methods = {name: parse_method(name, spec) for name, spec in params.methods.items()}
    for name, spec in methods.items():
        if "+" in name:
            raise ConfigError(
                f"methods.{name}: expected a name without '+' ('<method>{TUNED}' names a tuned "
                f"method's runs), found '{name}'"
            )
        check_grid(spec.kind, spec.options, spec.tune, params.search.budget, f"methods.{name}")
        if spec.kind == "grouped_rl":
            check_searched_recipe(name, spec.options, params.search)
        steps = getattr(spec.options, "steps", None) or params.finetune.steps
        every = getattr(spec.options, "eval_every", None) or params.finetune.eval_every
        if every > steps:  # with the method's overrides of the finetune block
            check_eval_every(f"methods.{name} (with finetune)", steps, every)
    params = dataclasses.replace(params, methods=methods)
    check_triplet_at_k1(params)
    return params


def check_searched_recipe(name: str, options: Any, search: SearchConfig) -> None:
    """A ``grouped_rl`` method fine-tunes and groups as its search did, so that its counts were
    chosen for the recipe they are used with: no override of the ``finetune`` block, and the
    ``search`` block's grouping options (one search serves every grouped_rl method of a strategy)."""
    where = f"methods.{name}"
    for f in dataclasses.fields(TrainOverrides):
        value = getattr(options, f.name)
        if value is not None:
            raise ConfigError(
                f"{where}.{f.name}: expected no override (the search chose the counts with the "
                f"finetune block's {f.name}), found {value!r}"
            )
    ours, theirs = options.activation_spec, search.activation_spec
    searched = {"algorithm": search.algorithm, "share_bias": search.share_bias}
    if ours.tag != theirs.tag:  # the patterns differ: name the first option that makes them
        searched |= {f: getattr(theirs, f) for f in ("features", "pool_size", "rectify")}
    for option, value in searched.items():
        if getattr(options, option) != value:
            raise ConfigError(
                f"{where}.{option}: expected {value!r}, as the search's groupings (they chose the "
                f"counts), found {getattr(options, option)!r}"
            )


def methods_at_k1(params: Params) -> set[str]:
    """Every method name a run of the pipeline lists at k = 1: the default run's and each study's
    (a block of its own k only where that has 1)."""
    if 1 not in params.episodes.k:
        return set()
    own = {m for block in params.k_blocks() if block.k is None or 1 in block.k for m in block.methods}
    return {*params.listed_methods(), *own}


def check_triplet_at_k1(params: Params) -> None:
    """No method listed at k = 1 may train with a triplet term (no positive pair at k = 1): an
    error naming the field that asks for one, before any job runs."""
    for name in sorted(methods_at_k1(params)):
        base = name.removesuffix(TUNED)
        spec = params.methods[base]
        if not METHODS[spec.kind].trains_features:
            continue
        own = getattr(spec.options, "triplet_weight", None)
        weight, field = (
            (own, f"methods.{base}.triplet_weight")
            if own is not None
            else (
                params.finetune.triplet_weight,
                "finetune.triplet_weight",
            )
        )
        grid = spec.tune.get("triplet_weight", []) if name.endswith(TUNED) else []
        if any(w > 0 for w in grid):
            weight, field = max(grid), f"methods.{base}.tune.triplet_weight"
        if weight > 0:
            raise ConfigError(
                f"{field}: expected 0, since method '{name}' runs at k = 1 (a triplet needs two "
                f"support images of a class; a regime block may run at other k), found {weight}"
            )


def params_from_dict(raw: Any) -> Params:
    """Validate a parsed params mapping (e.g. Snakemake's ``config``) as a whole."""
    return check_registries(from_dict(Params, raw, ""))


def read_params_file(path: str | Path) -> Any:
    """The parsed YAML of a params file (not yet validated); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"params file '{p}': expected an existing YAML file, found nothing")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise yaml_error(p, err) from err


def read_valid_params(path: str | Path) -> tuple[Any, Params]:
    """The parsed YAML of a params file and its validated :class:`Params`; raises
    :class:`ConfigError` naming the file and the field."""
    raw = read_params_file(path)
    try:
        return raw, params_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"params file '{path}': {err}") from err


def load_params(path: str | Path) -> Params:
    """Read and validate a params file; raises :class:`ConfigError` naming the file and field."""
    return read_valid_params(path)[1]


def params_to_dict(params: Params) -> dict[str, Any]:
    """The plain mapping of ``params`` that :func:`params_from_dict` reads back to equal params:
    every default explicit, each method written ``{kind: ..., <options>}``."""
    out = dataclasses.asdict(params)
    out["methods"] = {name: spec.to_raw() for name, spec in params.methods.items()}
    return out
