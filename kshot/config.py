"""Typed, validated configuration.

``params.yaml`` is parsed into the frozen dataclasses below. Every check names the offending field
(as a dotted path such as ``benchmarks.fashion.target_classes``), what was expected and what was found,
and unknown keys are reported with the closest valid key. Library code receives these objects; it
never reads ``params.yaml`` itself.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kshot.errors import ConfigError, suggest, yaml_error

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (simple types, lists, dicts, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: found {value!r}: {errors}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return {str(k): _check_value(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, found {value!r}")
    return value


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by name."""
    if data is None:
        data = {}
    label = where or "params"  # the top level: the params file (or mapping) itself
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, found {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{label}: unknown key '{key}'{suggest(key, fields)}; expected keys {sorted(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _check_value(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def _positive(where: str, name: str, value: float | int | None, strict: bool = True) -> None:
    if value is None:
        return
    if (strict and value <= 0) or (not strict and value < 0):
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(f"{where}.{name}: expected a number {bound}, found {value!r}")


def _check_classes(where: str, classes: list[int]) -> None:
    if len(classes) < 2:
        raise ConfigError(f"{where}: expected at least 2 classes, found {classes!r}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{where}: expected distinct classes, found duplicates in {classes!r}")
    if any(c < 0 for c in classes):
        raise ConfigError(f"{where}: expected class indices >= 0, found {classes!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where raw data lives and whether downloads are allowed.

    ``local_dirs`` maps a torchvision-read dataset (``local_dir_datasets()``) to a folder laid out
    as torchvision's root folder; its files are copied at acquisition instead of downloaded.
    """

    raw_dir: str = "data/raw"
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    download: bool = False
    image_folders: dict[str, str] = field(default_factory=dict)
    local_dirs: dict[str, str] = field(default_factory=dict)
    digits_test_fraction: float = 0.5

    def validate(self, where: str) -> None:
        from kshot.data.datasets import local_dir_datasets  # here: kshot.data.datasets imports this module

        valid = local_dir_datasets()
        for name in self.local_dirs:
            if name not in valid:
                raise _unknown(f"{where}.local_dirs.{name}", name, valid)
        if not 0.0 < self.digits_test_fraction < 1.0:
            raise ConfigError(
                f"{where}.digits_test_fraction: expected a number in (0, 1), "
                f"found {self.digits_test_fraction!r}"
            )


@dataclass(frozen=True)
class SourceConfig:
    """A source task: dataset, classes, backbone and its pre-training recipe."""

    dataset: str
    classes: list[int]
    backbone: str = "lenet"
    image_size: int | None = None
    max_per_class: int | None = None
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: float = 1.0
    pretrained: str | None = None
    # Part of the recipe, not a speed knob: on CPU the float rounding of the pre-training (and so the
    # checkpoint and every number after it) depends on the number of threads, so it is fixed here
    # instead of following ``--cores``.
    threads: int = 2
    seed: int | None = None  # the pre-training's seed (None: the top-level seed)

    def validate(self, where: str) -> None:
        _check_classes(f"{where}.classes", self.classes)
        for name in ("epochs", "batch_size", "lr", "max_per_class", "image_size", "width", "threads"):
            _positive(where, name, getattr(self, name))
        _positive(where, "weight_decay", self.weight_decay, strict=False)
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"{where}.seed: expected an integer >= 0 or null, found {self.seed}")

    def pretrain_seed(self, seed: int) -> int:
        """The seed of this source's pre-training: its own ``seed``, else the top-level ``seed``."""
        return self.seed if self.seed is not None else seed


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark: a source (by name) and a target dataset with its classes."""

    source: str
    target: str
    target_classes: list[int]

    def validate(self, where: str) -> None:
        _check_classes(f"{where}.target_classes", self.target_classes)


@dataclass(frozen=True)
class EpisodeConfig:
    """How k-shot episodes are drawn from the target data."""

    k: list[int] = field(default_factory=lambda: [1, 5, 10])
    n_episodes: int = 10
    val_per_class: int = 10
    test_per_class: int | None = None
    search_episodes: int = 3
    select_episodes: int = 0

    def validate(self, where: str) -> None:
        if not self.k:
            raise ConfigError(f"{where}.k: expected a non-empty list of shots, found []")
        for i, k in enumerate(self.k):
            if k < 1:
                raise ConfigError(f"{where}.k[{i}]: expected an integer >= 1, found {k!r}")
        if len(set(self.k)) != len(self.k):
            raise ConfigError(f"{where}.k: expected distinct values, found {self.k!r}")
        for name in ("n_episodes", "val_per_class", "test_per_class"):
            _positive(where, name, getattr(self, name))
        _positive(where, "search_episodes", self.search_episodes, strict=False)
        _positive(where, "select_episodes", self.select_episodes, strict=False)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters shared by the gradient-based fine-tuning methods.

    ``eval_every`` steps the validation accuracy is measured and the best state so far kept: the
    validation set selects the stopping step, the test set never does.
    """

    steps: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_every: int = 10
    head_init: str = "random"

    def validate(self, where: str) -> None:
        for name in ("steps", "lr", "eval_every"):
            _positive(where, name, getattr(self, name))
        _positive(where, "weight_decay", self.weight_decay, strict=False)
        _positive(where, "momentum", self.momentum, strict=False)
        if self.head_init not in ("random", "zero", "centroid"):
            raise ConfigError(
                f"{where}.head_init: expected one of ['centroid', 'random', 'zero'], "
                f"found {self.head_init!r}{suggest(self.head_init, ['centroid', 'random', 'zero'])}"
            )


@dataclass(frozen=True)
class MethodSpec:
    """A named method: its kind (the strategy class) and its options (checked by that class)."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """Which benchmarks and methods the default pipeline runs."""

    benchmarks: list[str]
    methods: list[str]


@dataclass(frozen=True)
class RegimeRuns:
    """One block of the regime study: every method of ``methods`` on every benchmark of ``benchmarks``."""

    benchmarks: list[str]
    methods: list[str]


@dataclass(frozen=True)
class RegimeConfig:
    """The regime study (``snakemake regime``): where does grouping help? ``runs`` lists what runs
    (beyond the default run), ``pairs`` the paired comparisons ``[a, b]`` (a − b) of its table."""

    runs: list[RegimeRuns] = field(default_factory=list)
    pairs: list[list[str]] = field(default_factory=list)

    def validate(self, where: str) -> None:
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(
                    f"{where}.pairs[{i}]: expected two different method names [a, b], found {pair!r}"
                )


@dataclass(frozen=True)
class ReplicatesConfig:
    """The replicate study (``snakemake replicates``): is a paired difference a property of the
    method, or of the one source network the default run pre-trains?

    Each seed of ``seeds`` pre-trains the source of every benchmark of ``benchmarks`` again with that
    seed, as source ``<source>_seed<s>``, and draws new episodes for it, as benchmark
    ``<benchmark>_seed<s>`` (:func:`with_replicates` adds both to the params). The default run is the
    replicate of its own seed. ``methods`` run on every replicate; ``pairs`` are the comparisons
    ``[a, b]`` (a − b) of the study's table.
    """

    seeds: list[int] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    pairs: list[list[str]] = field(default_factory=list)

    def validate(self, where: str) -> None:
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"{where}.seeds: expected distinct integers >= 0, found {self.seeds!r}")
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(
                    f"{where}.pairs[{i}]: expected two different method names [a, b], found {pair!r}"
                )


def replicate_name(name: str, seed: int) -> str:
    """The name of the replicate of source or benchmark ``name`` pre-trained with ``seed``."""
    return f"{name}_seed{seed}"


def replicate_benchmarks(params: Params) -> dict[str, tuple[str, int]]:
    """``{benchmark: (base benchmark, pre-training seed)}`` of every replicate of the replicate
    study, the default run's own benchmarks (the replicate of their source's seed) included."""
    out = {}
    for bench in params.replicates.benchmarks:
        source = params.sources[params.benchmarks[bench].source]
        out[bench] = (bench, source.pretrain_seed(params.seed))
        for seed in params.replicates.seeds:
            out[replicate_name(bench, seed)] = (bench, seed)
    return out


def with_replicates(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the replicate study's sources and benchmarks added (a new mapping; ``raw`` is
    not changed). A name the params define already is refused; an unknown benchmark or source is
    left for :func:`params_from_dict` to report."""
    block = raw.get("replicates") or {}
    if not isinstance(block, dict) or not block.get("seeds"):
        return raw
    sources, benchmarks = dict(raw.get("sources") or {}), dict(raw.get("benchmarks") or {})
    for bench in block.get("benchmarks") or []:
        base = benchmarks.get(bench)
        source = base.get("source") if isinstance(base, dict) else None
        if source not in sources:
            continue  # params_from_dict names the unknown benchmark or source
        for seed in block["seeds"]:
            for table, name, value in (
                (sources, replicate_name(source, seed), {**sources[source], "seed": seed}),
                (benchmarks, replicate_name(bench, seed), {**base, "source": replicate_name(source, seed)}),
            ):
                if name in table and table[name] != value:
                    kind = "sources" if table is sources else "benchmarks"
                    raise ConfigError(
                        f"replicates: expected the name '{name}' free for a replicate, found "
                        f"{kind}.{name} defined in the params"
                    )
                table[name] = value
    return {**raw, "sources": sources, "benchmarks": benchmarks}


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    sources: dict[str, SourceConfig]
    benchmarks: dict[str, BenchmarkConfig]
    methods: dict[str, dict[str, Any]]
    run: RunConfig
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    search: dict[str, Any] = field(default_factory=dict)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    replicates: ReplicatesConfig = field(default_factory=ReplicatesConfig)
    ablation: list[list[str]] = field(default_factory=list)

    def validate(self, where: str) -> None:
        from kshot.data.datasets import DATASETS
        from kshot.models import BACKBONES
        from kshot.search import SearchConfig

        from_dict(SearchConfig, self.search, "search")  # typed there: kshot.search imports this module

        if self.seed < 0:
            raise ConfigError(f"seed: expected an integer >= 0, found {self.seed}")

        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(
                f"device: expected one of ['auto', 'cpu', 'cuda'], found {self.device!r}"
                f"{suggest(self.device, ['auto', 'cpu', 'cuda'])}"
            )
        datasets = set(DATASETS) | set(self.data.image_folders)
        for name, src in self.sources.items():
            if src.dataset not in datasets:
                raise _unknown(f"sources.{name}.dataset", src.dataset, datasets)
            if src.backbone not in BACKBONES:
                raise _unknown(f"sources.{name}.backbone", src.backbone, BACKBONES)
        for name, bench in self.benchmarks.items():
            if bench.source not in self.sources:
                raise _unknown(f"benchmarks.{name}.source", bench.source, self.sources)
            if bench.target not in datasets:
                raise _unknown(f"benchmarks.{name}.target", bench.target, datasets)
            src = self.sources[bench.source]
            shared = sorted(set(bench.target_classes) & set(src.classes))
            if bench.target == src.dataset and shared:
                raise ConfigError(
                    f"benchmarks.{name}.target_classes: expected classes disjoint from "
                    f"sources.{bench.source}.classes (same dataset '{src.dataset}'), found {shared} in both"
                )
        for name, spec in self.methods.items():
            method_spec(name, spec)
        for i, b in enumerate(self.run.benchmarks):
            if b not in self.benchmarks:
                raise _unknown(f"run.benchmarks[{i}]", b, self.benchmarks)
        for i, m in enumerate(self.run.methods):
            if m not in self.methods:
                raise _unknown(f"run.methods[{i}]", m, self.methods)
        for i, block in enumerate(self.regime.runs):
            for j, b in enumerate(block.benchmarks):
                if b not in self.benchmarks:
                    raise _unknown(f"regime.runs[{i}].benchmarks[{j}]", b, self.benchmarks)
            for j, m in enumerate(block.methods):
                if m not in self.methods:
                    raise _unknown(f"regime.runs[{i}].methods[{j}]", m, self.methods)
        for i, pair in enumerate(self.ablation):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(
                    f"ablation[{i}]: expected two different method names [a, b], found {pair!r}"
                )
            for j, m in enumerate(pair):
                if m not in self.methods:
                    raise _unknown(f"ablation[{i}][{j}]", m, self.methods)
        for i, b in enumerate(self.replicates.benchmarks):
            if b not in self.benchmarks:
                raise _unknown(f"replicates.benchmarks[{i}]", b, self.benchmarks)
            own = self.sources[self.benchmarks[b].source].pretrain_seed(self.seed)
            if own in self.replicates.seeds:
                raise ConfigError(
                    f"replicates.seeds: expected seeds other than {own}, the pre-training seed of "
                    f"benchmarks.{b}'s source (the default run's replicate), found {self.replicates.seeds}"
                )
        for i, m in enumerate(self.replicates.methods):
            if m not in self.methods:
                raise _unknown(f"replicates.methods[{i}]", m, self.methods)
        for i, pair in enumerate(self.replicates.pairs):
            for j, m in enumerate(pair):
                if m not in self.replicates.methods:
                    raise _unknown(f"replicates.pairs[{i}][{j}]", m, self.replicates.methods)
        regime_methods = {m for block in self.regime.runs for m in block.methods}
        searched = sorted(
            m
            for m in {*self.run.methods, *regime_methods, *self.replicates.methods}
            if self.methods[m].get("kind") == "grouped_rl"
        )
        if searched and self.episodes.search_episodes < 1:
            raise ConfigError(
                f"episodes.search_episodes: expected >= 1, since the searched methods {searched} "
                f"run (their rewards need search episodes), found {self.episodes.search_episodes}"
            )
        for i, pair in enumerate(self.regime.pairs):
            for j, m in enumerate(pair):
                if m not in regime_methods:
                    raise _unknown(f"regime.pairs[{i}][{j}]", m, regime_methods)


def _unknown(field_name: str, value: str, valid: Any) -> ConfigError:
    from kshot.errors import unknown

    return unknown(field_name, value, valid)


def method_spec(name: str, raw: Any) -> MethodSpec:
    """Parse ``methods.<name>``: a mapping with ``kind`` and the kind's options."""
    from kshot.methods import METHODS

    where = f"methods.{name}"
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ConfigError(f"{where}: expected a mapping with a 'kind' key, found {raw!r}")
    kind = raw["kind"]
    if kind not in METHODS:
        raise _unknown(f"{where}.kind", kind, METHODS)
    options = {k: v for k, v in raw.items() if k != "kind"}
    METHODS[kind].parse_options(options, where)
    return MethodSpec(kind=kind, options=options)


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


def params_from_dict(raw: Any) -> Params:
    """Validate an already parsed params mapping (e.g. Snakemake's ``config``)."""
    return from_dict(Params, raw, "")
