"""Typed configuration: the bottom layer of kshot.

``params.yaml`` is parsed into the frozen dataclasses below. Every check names the offending field
(as a dotted path such as ``benchmarks.fashion.target_classes``), what was expected and what was found,
and unknown keys are reported with the closest valid key. Library code receives these objects; it
never reads ``params.yaml`` itself.

This module imports nothing of kshot but its errors: the checks here need no registry. The checks
that do (dataset, backbone and method names, each method's options) are made by :mod:`kshot.params`,
which sits above the registries and is what loads a params file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kshot.errors import ConfigError, check_choice, suggest, unknown

T = TypeVar("T")

# Names the checks below accept; the modules that implement them import these.
CLUSTERING = ("kmeans", "agglomerative")  # kshot.grouping
SEARCH_STRATEGIES = ("reinforce", "random")  # kshot.search
SEARCH_TIES = ("layer", "stage")  # kshot.search: one choice per layer, or per backbone stage
FEATURES = ("support", "support+pool")  # kshot.activations
TAG_PATTERN = r"support(\+pool\d+)?(-raw)?"  # an ActivationSpec's tag; the Snakemake wildcard's too
DEVICES = ("auto", "cpu", "cuda")
TUNED = "+tuned"  # <method>+tuned: the method with the options its tune stage chose (kshot.tuning)
# A number as YAML 1.2 writes it that YAML 1.1 (PyYAML: Snakemake's, DVC's and our loader) reads as a
# string: an exponent without a dot or without a sign (1e6, 2.5e-3 is read as a number already).
YAML12_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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
    if hasattr(tp, "from_raw"):
        return tp.from_raw(value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, str) and YAML12_NUMBER.fullmatch(value):
            return float(value)  # `1e6`: a number in YAML 1.2, a string to PyYAML's YAML 1.1
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


def check_eval_every(where: str, steps: int, eval_every: int) -> None:
    """The validation (every ``eval_every`` steps and at the last) picks the stopping step: with
    ``eval_every`` over ``steps`` it would see the last step only."""
    if eval_every > steps:
        raise ConfigError(
            f"{where}.eval_every: expected at most the {steps} fine-tuning steps (validation every "
            f"eval_every steps picks the stopping step; more sees only the last), found {eval_every}"
        )


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
    # the side image folders are stored at (RGB uint8, resized at acquisition): 224 for
    # ResNet-18 at ImageNet's size; 64 keeps small trees small
    image_folder_side: int = 64
    local_dirs: dict[str, str] = field(default_factory=dict)
    digits_test_fraction: float = 0.5

    def validate(self, where: str) -> None:
        _positive(where, "image_folder_side", self.image_folder_side)
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
    # null: random initialisation; 'imagenet': torchvision's weights (network); else a local file
    # holding a torchvision state dict of the backbone (kshot.files.checkpoint.read_weights)
    pretrained: str | None = None
    # Part of the recipe, not a speed knob: on CPU the float rounding of the pre-training (and so the
    # checkpoint and every number after it) depends on the number of threads, so it is fixed here
    # instead of following ``--cores``.
    threads: int = 2
    seed: int | None = None  # the pre-training's seed (None: the top-level seed)

    def validate(self, where: str) -> None:
        _check_classes(f"{where}.classes", self.classes)
        for name in ("batch_size", "lr", "max_per_class", "image_size", "width", "threads"):
            _positive(where, name, getattr(self, name))
        # epochs 0: the start is used as it is, a head only fitted on its frozen features: the
        # pre-trained weights, or without them the seeded random initialisation (the source-effect
        # study's control: what the architecture gives without any pre-training)
        _positive(where, "epochs", self.epochs, strict=False)
        if self.pretrained is not None and not self.pretrained.strip():
            raise ConfigError(
                f"{where}.pretrained: expected null, 'imagenet' or the path of a weights file, found ''"
            )
        _positive(where, "weight_decay", self.weight_decay, strict=False)
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"{where}.seed: expected an integer >= 0 or null, found {self.seed}")

    def weights_file(self) -> str | None:
        """The local weights file this source starts from, if any."""
        return None if self.pretrained in (None, "imagenet") else self.pretrained

    def pretrain_seed(self, seed: int) -> int:
        """The seed of this source's pre-training: its own ``seed``, else the top-level ``seed``."""
        return self.seed if self.seed is not None else seed


@dataclass(frozen=True)
class EpisodeOverrides:
    """A benchmark's own episode sizes, each in place of the ``episodes:`` value of its name
    (``None``: that value), for a backbone whose runs cost many times LeNet's (ResNet-18): fewer
    test images per class (``test_per_class``), search episodes (``search_episodes``: each search
    or tuning candidate's low-fidelity reward averages over them) or selection episodes
    (``select_episodes``: the finalists' full-fidelity comparison). Read by the episodes job only,
    so they are a property of the episodes file: the searches and tunings of the benchmark use
    whatever episodes it holds, every method the same."""

    test_per_class: int | None = None
    search_episodes: int | None = None
    select_episodes: int | None = None

    def validate(self, where: str) -> None:
        for f in dataclasses.fields(self):
            _positive(where, f.name, getattr(self, f.name))


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark: a source (by name) and a target dataset with its classes; ``episodes``: its own
    episode sizes over ``episodes:`` (:class:`EpisodeOverrides`)."""

    source: str
    target: str
    target_classes: list[int]
    episodes: EpisodeOverrides = field(default_factory=EpisodeOverrides)

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
    validation set selects the stopping step, the test set never does. ``triplet_weight`` > 0
    adds that multiple of a triplet loss with ``triplet_margin`` on the penultimate features (the
    hybrid loss, :func:`kshot.finetune.triplet_term`); it needs k >= 2.
    """

    steps: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_every: int = 10
    head_init: str = "random"
    triplet_weight: float = 0.0  # the hybrid loss: 0 is cross-entropy alone (kshot.finetune)
    triplet_margin: float = 0.2

    def validate(self, where: str) -> None:
        for name in ("steps", "lr", "eval_every", "triplet_margin"):
            _positive(where, name, getattr(self, name))
        _positive(where, "triplet_weight", self.triplet_weight, strict=False)
        check_eval_every(where, self.steps, self.eval_every)
        _positive(where, "weight_decay", self.weight_decay, strict=False)
        _positive(where, "momentum", self.momentum, strict=False)
        if self.head_init not in ("random", "zero", "centroid"):
            raise ConfigError(
                f"{where}.head_init: expected one of ['centroid', 'random', 'zero'], "
                f"found {self.head_init!r}{suggest(self.head_init, ['centroid', 'random', 'zero'])}"
            )


@dataclass(frozen=True)
class MethodSpec:
    """A named method: its kind (the strategy class) and its options.

    Written in the params as one mapping, ``{kind: grouped, groups: 0.25}``. Here ``options`` is
    that mapping less ``kind``; :func:`kshot.params.parse_method` checks it against the kind's
    ``Options`` dataclass and returns the spec with ``options`` parsed, which is the form every
    other module receives.
    """

    kind: str
    options: Any = field(default_factory=dict)
    # option name -> candidate values: the grid the tuning stage searches (:mod:`kshot.tuning`);
    # empty: the method runs with its options as written only
    tune: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: Any, where: str) -> MethodSpec:
        if not isinstance(raw, dict) or "kind" not in raw:
            raise ConfigError(f"{where}: expected a mapping with a 'kind' key, found {raw!r}")
        if not isinstance(raw["kind"], str):
            raise ConfigError(f"{where}.kind: expected a method kind name, found {raw['kind']!r}")
        tune = raw.get("tune") or {}
        if not isinstance(tune, dict) or not all(isinstance(v, list) for v in tune.values()):
            raise ConfigError(
                f"{where}.tune: expected a mapping of option names to lists of candidate values, "
                f"found {raw.get('tune')!r}"
            )
        options = {k: v for k, v in raw.items() if k not in ("kind", "tune")}
        return cls(kind=raw["kind"], options=options, tune=tune)

    def to_raw(self) -> dict[str, Any]:
        """The mapping the params write for this spec (every option explicit once parsed)."""
        options = self.options
        if dataclasses.is_dataclass(options):
            options = dataclasses.asdict(options)  # type: ignore[arg-type]
        return {"kind": self.kind, **options, **({"tune": self.tune} if self.tune else {})}


@dataclass(frozen=True)
class ActivationSpec:
    """Which images feed the activation patterns and whether responses are rectified
    (:mod:`kshot.activations` explains the choices). Equal specs give equal patterns; the
    pipeline's activation file of a spec is named by its :attr:`tag`."""

    features: str = "support"
    pool_size: int = 500
    rectify: bool = True

    def validate(self, where: str) -> None:
        check_choice(f"{where}.features", self.features, FEATURES)
        if self.pool_size < 1:
            raise ConfigError(f"{where}.pool_size: expected an integer >= 1, found {self.pool_size}")

    @property
    def tag(self) -> str:
        """The name of this spec's activation file: equal tags mean equal patterns."""
        tag = "support" if self.features == "support" else f"support+pool{self.pool_size}"
        return tag if self.rectify else f"{tag}-raw"

    @classmethod
    def from_tag(cls, tag: str) -> ActivationSpec:
        match = re.fullmatch(TAG_PATTERN, tag)
        pool = match.group(1)[len("+pool") :] if match and match.group(1) else None
        if not match or (pool is not None and int(pool) < 1):
            raise ConfigError(
                f"activations tag: expected 'support' or 'support+pool<N>' (N >= 1), optionally "
                f"followed by '-raw', found {tag!r}"
            )
        return cls(
            features="support" if pool is None else "support+pool",
            pool_size=int(pool) if pool else cls.pool_size,
            rectify=match.group(2) is None,
        )


@dataclass(frozen=True)
class ControllerConfig:
    """Hyper-parameters of the search's LSTM policy and of its REINFORCE updates
    (:mod:`kshot.controller`)."""

    hidden: int = 32
    embed: int = 16
    lr: float = 0.05
    baseline_decay: float = 0.8
    entropy_weight: float = 0.01

    def validate(self, where: str) -> None:
        for name in ("hidden", "embed", "lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: expected a number > 0, found {getattr(self, name)}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ConfigError(
                f"{where}.baseline_decay: expected a number in [0, 1), found {self.baseline_decay}"
            )
        if self.entropy_weight < 0:
            raise ConfigError(f"{where}.entropy_weight: expected a number >= 0, found {self.entropy_weight}")


@dataclass(frozen=True)
class SearchConfig:
    """The ``search`` block: the search of group counts per layer (:mod:`kshot.search`).

    ``strategy``: ``reinforce`` (the LSTM controller) or ``random`` (the control); ``budget``:
    distinct configurations fine-tuned; ``max_samples``: samples drawn at most (``None``:
    ``4 * budget``); ``menu``: fractions in (0, 1] of each layer's neurons; ``layers``: grouped
    layers (``None``: every groupable layer; ``conv``/``fc`` select by type); ``algorithm``,
    ``features``, ``pool_size``, ``share_bias``: how each configuration's groupings are made, as for
    the grouped methods; ``population``: fine-tune the search episodes of one configuration as one
    batched population (:mod:`kshot.population`) or one after another, ``"auto"`` batching on CUDA
    only (on CPU the batched population is the slower, see ``benchmarks/``); ``steps``: fine-tuning
    steps of a search evaluation (``None``: the ``finetune`` block's), fewer making a cheaper,
    low-fidelity reward; ``finalists``: how many of the best searched configurations are
    re-evaluated, with the ungrouped one, at full fidelity on the selection episodes to choose the
    counts (0: take the search's best stable configuration, no grouping when none is); ``tie``:
    ``layer`` (one choice per layer) or ``stage`` (one choice per stage of the backbone,
    :meth:`kshot.models.Backbone.stages`: five for ResNet-18's twenty conv layers, a space a budget
    of 16 can explore).
    """

    strategy: str = "reinforce"
    budget: int = 24
    max_samples: int | None = None
    menu: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0])
    layers: list[str] | None = None
    algorithm: str = "kmeans"
    features: str = "support"
    pool_size: int = 500
    share_bias: bool = True
    population: bool | str = "auto"
    steps: int | None = None
    finalists: int = 0
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    tie: str = "layer"

    @property
    def activation_spec(self) -> ActivationSpec:
        """The activation patterns the search's groupings cluster (rectified, as the methods')."""
        return ActivationSpec(self.features, self.pool_size)

    def validate(self, where: str) -> None:
        self.activation_spec.validate(where)
        check_choice(f"{where}.strategy", self.strategy, SEARCH_STRATEGIES)
        check_choice(f"{where}.algorithm", self.algorithm, CLUSTERING)
        check_choice(f"{where}.tie", self.tie, SEARCH_TIES)
        if self.population not in (True, False, "auto"):
            raise ConfigError(
                f"{where}.population: expected true, false or 'auto', found {self.population!r}"
            )
        if self.finalists < 0:
            raise ConfigError(f"{where}.finalists: expected an integer >= 0, found {self.finalists}")
        for name in ("budget", "max_samples", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{where}.{name}: expected an integer >= 1, found {value}")
        if not self.menu:
            raise ConfigError(f"{where}.menu: expected a non-empty list of fractions, found []")
        for i, f in enumerate(self.menu):
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"{where}.menu[{i}]: expected a fraction in (0, 1], found {f!r}")


@dataclass(frozen=True)
class RunConfig:
    """Which benchmarks and methods the default pipeline runs, at the shots ``k`` (``None``: every
    k of ``episodes.k``; a subset keeps the default run within its time: the studies run most of
    its methods at the other k, the peers study all but ``grouped_pool`` and ``grouped_random``)."""

    benchmarks: list[str]
    methods: list[str]
    k: list[int] | None = None


@dataclass(frozen=True)
class RegimeRuns:
    """One block of the regime study: every method of ``methods`` on every benchmark of
    ``benchmarks``, at the shots ``k`` (``None``: every k of ``episodes.k``; a subset of them, e.g.
    without k = 1 for the triplet loss, which needs two support images of a class)."""

    benchmarks: list[str]
    methods: list[str]
    k: list[int] | None = None


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
    """A replicate study (``snakemake replicates``; ``resnet_replicates`` for the ResNet-18
    benchmarks, whose runs cost more): is a paired difference a property of the method, or of the
    one source network the default run pre-trains?

    Each seed of ``seeds`` pre-trains the source of every benchmark of ``benchmarks`` again with that
    seed, as source ``<source>_seed<s>``, and draws new episodes for it, as benchmark
    ``<benchmark>_seed<s>`` (:func:`with_replicates` adds both to the params). The default run is the
    replicate of its own seed. ``methods`` run on every replicate, at each of ``k`` (``None``: every
    k of ``episodes.k``); ``pairs`` are the comparisons ``[a, b]`` (a − b) of the study's table.
    """

    seeds: list[int] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    pairs: list[list[str]] = field(default_factory=list)
    k: list[int] | None = None

    def validate(self, where: str) -> None:
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"{where}.seeds: expected distinct integers >= 0, found {self.seeds!r}")
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(
                    f"{where}.pairs[{i}]: expected two different method names [a, b], found {pair!r}"
                )


@dataclass(frozen=True)
class PeersConfig:
    """The peers study (``snakemake peers``): every method of ``methods`` (tuned ones as
    ``<method>+tuned``) on the default run's benchmarks at every k of ``episodes.k``, in tables of their own
    (reports/peers/): the contest that does not fit in the default run's time."""

    methods: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ResNetStudyConfig:
    """A study of ``methods`` on benchmarks of their own (the ResNet-18 sources'), at each of ``k``
    (``None``: every k of ``episodes.k``), tabled like the default run in reports/<study>/:
    ``resnet`` (``snakemake resnet``: the paper's claim at the scale of a popular CNN, with both
    group-count searches) and ``resnet_peers`` (``snakemake resnet_peers``: the peer methods,
    tuned, on ResNet-18)."""

    benchmarks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    k: list[int] | None = None


@dataclass(frozen=True)
class SourceEffectConfig:
    """The source-effect study (``snakemake source_effect``): the targets of ``benchmarks``
    fine-tuned from each of ``sources`` by ``methods`` at every k of ``episodes.k``, on the same
    episodes, with each source's features measured against the target task (linear CKA). A
    source trained on classes of the target's own dataset that the target also has is left out:
    its features would have seen the target's labels. ``control``: the source each other one is
    compared with (random weights: what the architecture gives without pre-training)."""

    benchmarks: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    control: str | None = None
    cka_images: int = 2000  # target training images (seeded) whose features the CKA compares


@dataclass(frozen=True)
class AlignmentStudyConfig:
    """The alignment study (``snakemake alignment``): ``methods`` on ``benchmarks`` at each of ``k``
    (``None``: every k of ``episodes.k``) with the layers' representation/weight/gradient alignment
    (:mod:`kshot.alignment`) logged every ``every`` steps, on the evaluation episodes."""

    benchmarks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    k: list[int] | None = None
    every: int = 5

    def validate(self, where: str) -> None:
        _positive(where, "every", self.every)


@dataclass(frozen=True)
class MapsConfig:
    """The activation-maps study (``snakemake maps``): for each of ``benchmarks`` (one per
    backbone), Mapper graphs (:mod:`kshot.maps`) of ``layer`` (``last``: the last groupable one)
    on ``images`` target training images, its neurons grouped into ``groups`` (a count, or a
    fraction of the neurons) by k-means; the cover has ``cubes`` x ``cubes`` hypercubes
    overlapping by ``overlap``."""

    benchmarks: list[str] = field(default_factory=list)
    layer: str = "last"
    images: int = 1000
    groups: int | float = 0.25
    cubes: int = 10
    overlap: float = 0.5

    def validate(self, where: str) -> None:
        for name in ("images", "groups", "cubes"):
            _positive(where, name, getattr(self, name))
        if not 0.0 < self.overlap < 1.0:
            raise ConfigError(f"{where}.overlap: expected a number in (0, 1), found {self.overlap!r}")


def source_variant(benchmark: str, source: str) -> str:
    """The name of the source-effect study's benchmark: ``benchmark``'s target from ``source``."""
    return f"{benchmark}_from_{source}"


def _shares_classes(source: dict[str, Any], bench: dict[str, Any]) -> bool:
    return source.get("dataset") == bench.get("target") and bool(
        set(source.get("classes") or []) & set(bench.get("target_classes") or [])
    )


def _source_cells(
    block: dict[str, Any], sources: dict[str, Any], benchmarks: dict[str, Any]
) -> dict[str, tuple[str, str]]:
    """``{benchmark: (base benchmark, source)}`` of every cell of the source-effect study (from
    raw params), the base benchmarks with their own source included."""
    out = {}
    for bench in block.get("benchmarks") or []:
        base = benchmarks.get(bench)
        if not isinstance(base, dict):
            continue  # params_from_dict names the unknown benchmark
        for source in block.get("sources") or []:
            if source == base.get("source"):
                out[bench] = (bench, source)
            elif isinstance(sources.get(source), dict) and not _shares_classes(sources[source], base):
                out[source_variant(bench, source)] = (bench, source)
    return out


def source_effect_benchmarks(params: Params) -> dict[str, tuple[str, str]]:
    """``{benchmark: (base benchmark, source)}`` of every cell of the source-effect study."""
    raw = {
        "benchmarks": {n: dataclasses.asdict(b) for n, b in params.benchmarks.items()},
        "sources": {n: dataclasses.asdict(s) for n, s in params.sources.items()},
    }
    block = dataclasses.asdict(params.source_effect)
    return _source_cells(block, raw["sources"], raw["benchmarks"])


def with_source_effect(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the source-effect study's benchmarks added (a new mapping), as
    :func:`with_replicates` adds the replicates'."""
    block = raw.get("source_effect") or {}
    if not isinstance(block, dict) or not block.get("sources"):
        return raw
    sources, benchmarks = raw.get("sources") or {}, dict(raw.get("benchmarks") or {})
    for name, (base, source) in _source_cells(block, sources, benchmarks).items():
        value = {**benchmarks[base], "source": source}
        if name != base and name in benchmarks and benchmarks[name] != value:
            raise ConfigError(
                f"source_effect: expected the name '{name}' free for the study's benchmark, found "
                f"benchmarks.{name} defined in the params"
            )
        benchmarks[name] = benchmarks.get(name, value)
    return {**raw, "benchmarks": benchmarks}


def replicate_name(name: str, seed: int) -> str:
    """The name of the replicate of source or benchmark ``name`` pre-trained with ``seed``."""
    return f"{name}_seed{seed}"


# the replicate studies: each a ReplicatesConfig block of the params, run by the target of its name
REPLICATE_STUDIES = ("replicates", "resnet_replicates")
# the studies of methods on benchmarks of their own (:class:`ResNetStudyConfig`)
BENCHMARK_STUDIES = ("resnet", "resnet_peers")


def replicate_benchmarks(params: Params, study: str = "replicates") -> dict[str, tuple[str, int]]:
    """``{benchmark: (base benchmark, pre-training seed)}`` of every replicate of replicate study
    ``study`` (one of :data:`REPLICATE_STUDIES`), the base benchmarks themselves (the replicate of
    their source's own seed) included."""
    block = getattr(params, study)
    out = {}
    for bench in block.benchmarks:
        source = params.sources[params.benchmarks[bench].source]
        out[bench] = (bench, source.pretrain_seed(params.seed))
        for seed in block.seeds:
            out[replicate_name(bench, seed)] = (bench, seed)
    return out


def with_replicates(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the replicate studies' sources and benchmarks added (a new mapping; ``raw`` is
    not changed). A name the params define already is refused; an unknown benchmark or source is
    left for :func:`params_from_dict` to report."""
    sources, benchmarks = dict(raw.get("sources") or {}), dict(raw.get("benchmarks") or {})
    for study in REPLICATE_STUDIES:
        block = raw.get(study) or {}
        if isinstance(block, dict) and block.get("seeds"):
            _add_replicates(study, block, sources, benchmarks)
    return {**raw, "sources": sources, "benchmarks": benchmarks}


def _add_replicates(study: str, block: dict[str, Any], sources: dict, benchmarks: dict) -> None:
    """Add replicate study ``study``'s (raw ``block``'s) sources and benchmarks to the raw
    ``sources`` and ``benchmarks`` mappings, in place."""
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
                        f"{study}: expected the name '{name}' free for a replicate, found "
                        f"{kind}.{name} defined in the params"
                    )
                table[name] = value


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``.

    Built here, every section is typed and checked on its own, and the names one section gives
    another (benchmarks' sources, the run's methods, ...) are checked to exist. What needs a
    registry (dataset, backbone and method kinds, each method's options) is checked by
    :func:`kshot.params.params_from_dict`, the way to build a ``Params`` from a params file.
    """

    sources: dict[str, SourceConfig]
    benchmarks: dict[str, BenchmarkConfig]
    methods: dict[str, MethodSpec]
    run: RunConfig
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    replicates: ReplicatesConfig = field(default_factory=ReplicatesConfig)
    resnet_replicates: ReplicatesConfig = field(default_factory=ReplicatesConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    resnet: ResNetStudyConfig = field(default_factory=ResNetStudyConfig)
    resnet_peers: ResNetStudyConfig = field(default_factory=ResNetStudyConfig)
    source_effect: SourceEffectConfig = field(default_factory=SourceEffectConfig)
    alignment: AlignmentStudyConfig = field(default_factory=AlignmentStudyConfig)
    maps: MapsConfig = field(default_factory=MapsConfig)
    ablation: list[list[str]] = field(default_factory=list)

    @property
    def method_names(self) -> list[str]:
        """The names a run may list: every method, and ``<method>+tuned`` for each with a ``tune``
        grid (the method with the options its tune stage chose)."""
        return [*self.methods, *(f"{m}{TUNED}" for m, spec in self.methods.items() if spec.tune)]

    def episodes_of(self, benchmark: str) -> tuple[EpisodeConfig, str]:
        """How ``benchmark``'s episodes are drawn (``episodes``, with the benchmark's own sizes where
        it sets them: :class:`EpisodeOverrides`) and the params field its test size comes from."""
        own = {
            k: v for k, v in dataclasses.asdict(self.benchmarks[benchmark].episodes).items() if v is not None
        }
        test_field = "episodes.test_per_class"
        if "test_per_class" in own:
            test_field = f"benchmarks.{benchmark}.episodes.test_per_class"
        return dataclasses.replace(self.episodes, **own), test_field

    def listed_methods(self) -> set[str]:
        """The method names the peers and the source-effect study run at every k of ``episodes.k``
        (the blocks that may name their own k, :meth:`k_blocks`, left out)."""
        return {*self.peers.methods, *self.source_effect.methods}

    def k_blocks(
        self,
    ) -> list[RunConfig | RegimeRuns | ReplicatesConfig | ResNetStudyConfig | AlignmentStudyConfig]:
        """The blocks of methods that may name their own k (``None``: every k of ``episodes.k``):
        the default run, the regime study's runs, the replicate studies, the benchmark studies and
        the alignment study."""
        studies = (*REPLICATE_STUDIES, *BENCHMARK_STUDIES, "alignment")
        return [self.run, *self.regime.runs, *(getattr(self, study) for study in studies)]

    def shots(self, block: Any) -> list[int]:
        """The k values ``block`` (one of :meth:`k_blocks`) runs at: its own, else every k of
        ``episodes.k``."""
        return block.k or self.episodes.k

    def method(self, name: str) -> MethodSpec:
        """The spec of method ``name``; for ``<method>+tuned``, that of ``<method>``."""
        base = name.removesuffix(TUNED)
        if name not in self.method_names:
            raise unknown("methods", name, self.method_names)
        return self.methods[base]

    def validate(self, where: str) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed: expected an integer >= 0, found {self.seed}")
        check_choice("device", self.device, DEVICES)
        for name, bench in self.benchmarks.items():
            if bench.source not in self.sources:
                raise unknown(f"benchmarks.{name}.source", bench.source, self.sources)
            src = self.sources[bench.source]
            shared = sorted(set(bench.target_classes) & set(src.classes))
            if bench.target == src.dataset and shared:
                raise ConfigError(
                    f"benchmarks.{name}.target_classes: expected classes disjoint from "
                    f"sources.{bench.source}.classes (same dataset '{src.dataset}'), found {shared} in both"
                )
        _check_names("run.benchmarks", self.run.benchmarks, self.benchmarks)
        _check_names("run.methods", self.run.methods, self.method_names)
        _check_own_k("run.k", self.run.k, self.episodes.k)
        for i, block in enumerate(self.regime.runs):
            _check_names(f"regime.runs[{i}].benchmarks", block.benchmarks, self.benchmarks)
            _check_names(f"regime.runs[{i}].methods", block.methods, self.method_names)
            _check_own_k(f"regime.runs[{i}].k", block.k, self.episodes.k)
        for i, pair in enumerate(self.ablation):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(
                    f"ablation[{i}]: expected two different method names [a, b], found {pair!r}"
                )
            _check_names(f"ablation[{i}]", pair, self.method_names)
        for study in REPLICATE_STUDIES:
            block = getattr(self, study)
            for i, b in enumerate(block.benchmarks):
                if b not in self.benchmarks:
                    raise unknown(f"{study}.benchmarks[{i}]", b, self.benchmarks)
                own = self.sources[self.benchmarks[b].source].pretrain_seed(self.seed)
                if own in block.seeds:
                    raise ConfigError(
                        f"{study}.seeds: expected seeds other than {own}, the pre-training seed of "
                        f"benchmarks.{b}'s source (the base replicate), found {block.seeds}"
                    )
            _check_names(f"{study}.methods", block.methods, self.method_names)
            _check_own_k(f"{study}.k", block.k, self.episodes.k)
            for i, pair in enumerate(block.pairs):
                _check_names(f"{study}.pairs[{i}]", pair, block.methods)
        _check_names("peers.methods", self.peers.methods, self.method_names)
        for study in BENCHMARK_STUDIES:
            block = getattr(self, study)
            _check_names(f"{study}.benchmarks", block.benchmarks, self.benchmarks)
            _check_names(f"{study}.methods", block.methods, self.method_names)
            _check_own_k(f"{study}.k", block.k, self.episodes.k)
        effect = self.source_effect
        _check_names("source_effect.benchmarks", effect.benchmarks, self.benchmarks)
        _check_names("source_effect.sources", effect.sources, self.sources)
        _check_names("source_effect.methods", effect.methods, self.method_names)
        if effect.sources and effect.control is None:
            raise ConfigError(
                f"source_effect.control: expected the source the others are compared with, one of "
                f"{effect.sources}, found null"
            )
        if effect.control is not None and effect.control not in effect.sources:
            raise unknown("source_effect.control", effect.control, effect.sources)
        _positive("source_effect", "cka_images", effect.cka_images)
        _check_names("alignment.benchmarks", self.alignment.benchmarks, self.benchmarks)
        _check_names("alignment.methods", self.alignment.methods, self.method_names)
        _check_own_k("alignment.k", self.alignment.k, self.episodes.k)
        _check_names("maps.benchmarks", self.maps.benchmarks, self.benchmarks)
        regime_methods = {m for block in self.regime.runs for m in block.methods}
        searched = sorted(
            m
            for m in {*self.listed_methods(), *(m for block in self.k_blocks() for m in block.methods)}
            if self.method(m).kind == "grouped_rl" or m.endswith(TUNED)
        )
        if searched and self.episodes.search_episodes < 1:
            raise ConfigError(
                f"episodes.search_episodes: expected >= 1, since the searched or tuned methods {searched} "
                f"run (their rewards need search episodes), found {self.episodes.search_episodes}"
            )
        for i, pair in enumerate(self.regime.pairs):
            _check_names(f"regime.pairs[{i}]", pair, regime_methods)


def _check_own_k(where: str, k: list[int] | None, episodes_k: list[int]) -> None:
    """A block's own k: ``None`` (every k of ``episodes.k``) or a non-empty list of them."""
    if k is None:
        return
    if not k:
        raise ConfigError(
            f"{where}: expected k values of episodes.k {episodes_k} (null: all of them), found []"
        )
    _check_names(where, k, episodes_k)
    if len(set(k)) != len(k):
        raise ConfigError(f"{where}: expected distinct values, found {k!r}")


def _check_names(where: str, names: list[str], valid: Any) -> None:
    """Raise the error naming ``where[i]`` for the first of ``names`` not in ``valid``."""
    for i, name in enumerate(names):
        if name not in valid:
            raise unknown(f"{where}[{i}]", name, valid)
