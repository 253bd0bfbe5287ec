"""Grouped fine-tuning (GNA, the paper's method) and its ablations.

- ``grouped``: cluster each grouped layer's neurons by their activation patterns on the source
  network, then fine-tune every parameter with the group-mean gradient
  (:class:`kshot.shared_grad.GroupedGradient`). The counts per layer come from ``groups``.
- ``grouped_random``: the same group sizes as the activation grouping, random membership. It keeps
  the degrees of freedom and changes only *which* neurons share, so the gap to ``grouped`` measures
  what the activations contribute.
- ``grouped_rl``: the counts per layer found by the RL search (``kshot.search``), handed in as
  ``ep.artifacts['search_counts']``.

Activations are computed on the source network before fine-tuning (the hook is built before the
first step); the new head is never grouped, so its random initialisation does not matter. Which
images feed the activations (``features``) is a design choice the paper leaves open:
``support`` uses the k-shot support images only; ``support+pool`` adds up to ``pool_size`` unlabeled
target images (``ep.artifacts['unlabeled']``, the target pool without labels), because with
``k = 1`` a pattern over 5 images is a poor estimate of how alike two neurons are. The validation
and test images never feed the grouping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kshot.activations import feature_images, layer_activations
from kshot.config import CLUSTERING, SEARCH_STRATEGIES, ActivationSpec
from kshot.errors import ConfigError, DataError, check_choice
from kshot.finetune import TrainHook
from kshot.grouping import (
    check_assignment,
    cluster_quality,
    group_layers,
    layer_sizes,
    random_grouping,
    resolve_count,
    select_layers,
)
from kshot.methods.base import EpisodeData, GradientMethod, TrainOverrides
from kshot.models import Backbone
from kshot.shared_grad import GroupedGradient


@dataclass(frozen=True)
class GroupingOptions(TrainOverrides):
    """How groupings are made; shared by the three grouped kinds.

    ``algorithm``: ``kmeans`` | ``agglomerative``; ``features``: ``support`` | ``support+pool``;
    ``pool_size``: unlabeled images drawn (seeded) for ``support+pool``; ``share_bias``: biases
    share the group gradient too; ``rectify``: cluster rectified (post-ReLU) responses.
    """

    algorithm: str = "kmeans"
    features: str = "support"
    pool_size: int = 500
    share_bias: bool = True
    rectify: bool = True

    def validate(self, where: str) -> None:
        check_choice(f"{where}.algorithm", self.algorithm, CLUSTERING)
        self.activation_spec.validate(where)

    @property
    def activation_spec(self) -> ActivationSpec:
        """Which activation patterns this method clusters (the pipeline's activation file)."""
        return ActivationSpec(self.features, self.pool_size, self.rectify)


def _check_spec(spec: int | float, where: str) -> None:
    """Range checks that need no model (the upper bound of a count is checked at run time)."""
    if isinstance(spec, int) and spec < 1:
        raise ConfigError(f"{where}: expected a group count >= 1, found {spec}")
    if isinstance(spec, float) and not 0.0 < spec <= 1.0:
        raise ConfigError(f"{where}: expected a fraction of the neurons in (0, 1], found {spec!r}")


@dataclass(frozen=True)
class GroupedOptions(GroupingOptions):
    """``groups``: an int (count) or a float in (0, 1] (fraction of the neurons) for every grouped
    layer, or a mapping layer -> count/fraction (then its keys are the grouped layers).
    ``layers``: which layers are grouped: names, or ``conv`` / ``fc`` for every groupable layer of
    that type (default: every groupable layer)."""

    groups: int | float | dict[str, int | float] = 0.25
    layers: list[str] | None = None

    def validate(self, where: str) -> None:
        super().validate(where)
        if isinstance(self.groups, dict):
            if not self.groups:
                raise ConfigError(f"{where}.groups: expected a non-empty mapping, found {{}}")
            for layer, spec in self.groups.items():
                _check_spec(spec, f"{where}.groups.{layer}")
        else:
            _check_spec(self.groups, f"{where}.groups")
        if self.layers is not None and not self.layers:
            raise ConfigError(f"{where}.layers: expected a non-empty list or null, found []")


class _GroupedBase(GradientMethod):
    """Build the grouping before fine-tuning; report counts and cluster quality in ``extra``.

    The grouping diagnostics of the current episode are kept on the instance between
    :meth:`hooks` and :meth:`extra` (both called within one :meth:`run`; runs are sequential).
    """

    random_membership: ClassVar[bool] = False
    Options = GroupingOptions

    def counts(self, model: Backbone, ep: EpisodeData) -> dict[str, int]:
        raise NotImplementedError

    def grouping(
        self, model: Backbone, ep: EpisodeData, acts: dict[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """This episode's assignments ``{layer: [N]}`` and their diagnostics (counts, cluster
        quality), from the patterns ``acts`` ``{layer: [N, M]}`` (the pipeline's activation file)
        or, when ``None``, from activations computed here on ``ep``'s feature images."""
        opts = self.options
        counts = self.counts(model, ep)
        if acts is None:
            images = feature_images(
                ep.support[0],
                ep.artifacts.get("unlabeled"),
                opts.features,
                opts.pool_size,
                ep.seed,
                ep.artifacts.get("unlabeled_exclude"),
            )
            acts = layer_activations(model, images, list(counts), ep.device, rectify=opts.rectify)
        assign = group_layers(acts, counts, opts.algorithm, seed=ep.seed)
        if self.random_membership:
            assign = {
                name: random_grouping(a, seed=ep.seed + i) for i, (name, a) in enumerate(assign.items())
            }
        extra: dict[str, Any] = {
            "counts": counts,
            "n_neurons": {name: len(a) for name, a in assign.items()},
            "algorithm": opts.algorithm,
            "features": opts.features,
            "n_feature_images": int(acts[next(iter(counts))].shape[1]),
            "random_membership": self.random_membership,
            "quality": {name: cluster_quality(acts[name], a) for name, a in assign.items()},
        }
        return assign, extra

    def hooks(self, model: Backbone, ep: EpisodeData) -> list[TrainHook]:
        """The shared-gradient hook of this episode's grouping: the one the pipeline's group stage
        made (``ep.artifacts['groups']``: ``{'assign': ..., 'extra': ...}``) or one made here."""
        given = ep.artifacts.get("groups")
        if given is None:
            assign, self._extra = self.grouping(model, ep)
        else:
            assign, self._extra = given["assign"], given["extra"]
            if not isinstance(assign, dict) or not isinstance(self._extra, dict) or not assign:
                raise DataError(
                    "groups: expected {'assign': {layer: assignment}, 'extra': {...}} from the group "
                    f"file, found assign={type(assign).__name__}, extra={type(self._extra).__name__}"
                )
            sizes = layer_sizes(model, list(assign))
            for name, a in assign.items():
                check_assignment(a, sizes[name], f"groups of layer '{name}'")
        return [GroupedGradient(model, assign, share_bias=self.options.share_bias)]

    def extra(self, model: Backbone, ep: EpisodeData) -> dict[str, Any]:
        return self._extra


class Grouped(_GroupedBase):
    """GNA with fixed counts per layer (``groups``)."""

    kind = "grouped"
    Options = GroupedOptions

    def counts(self, model: Backbone, ep: EpisodeData) -> dict[str, int]:
        groups, layers = self.options.groups, self.options.layers
        where = self.where
        if isinstance(groups, dict):
            field = f"{where}.layers" if layers is not None else f"{where}.groups"
            if layers is None:
                layers = [n for n in model.groupable() if n in groups]
                layers += [n for n in groups if n not in layers]  # unknown names fail below
            layers = select_layers(model, layers)
            missing = [n for n in layers if n not in groups]
            if missing:
                raise ConfigError(
                    f"{where}.groups: expected a count for each layer of {where}.layers, missing {missing}"
                )
        else:
            field = f"{where}.layers"
            layers = select_layers(model, layers)
        sizes = layer_sizes(model, layers, field)
        return {
            name: resolve_count(
                groups[name] if isinstance(groups, dict) else groups,
                n,
                f"{where}.groups.{name}"
                if isinstance(groups, dict)
                else f"{where}.groups (for layer {name})",
            )
            for name, n in sizes.items()
        }


class GroupedRandom(Grouped):
    """Ablation: the activation grouping's sizes with random membership."""

    kind = "grouped_random"
    random_membership = True


@dataclass(frozen=True)
class GroupedRLOptions(GroupingOptions):
    """``search``: which search's counts to use, ``reinforce`` (the controller) or ``random`` (the
    random-search control); the pipeline hands the matching trace's best counts in."""

    search: str = "reinforce"

    def validate(self, where: str) -> None:
        super().validate(where)
        check_choice(f"{where}.search", self.search, SEARCH_STRATEGIES)


class GroupedRL(_GroupedBase):
    """GNA with the counts per layer chosen by the RL search (``artifacts['search_counts']``)."""

    kind = "grouped_rl"
    Options = GroupedRLOptions

    def counts(self, model: Backbone, ep: EpisodeData) -> dict[str, int]:
        found = ep.artifacts.get("search_counts")
        if not isinstance(found, dict) or not found:
            raise DataError(
                f"{self.where}: expected the searched group counts per layer (the search stage's "
                "result: `kshot finetune --search <search.json>`, or artifacts['search_counts'] "
                f"through the library; run the search for this benchmark and k first), found {found!r}"
            )
        sizes = layer_sizes(model, list(found))
        out = {}
        for name, n in sizes.items():
            g = found[name]
            if isinstance(g, bool) or not isinstance(g, int):
                raise DataError(f"search_counts.{name}: expected an integer count, found {g!r}")
            out[name] = resolve_count(g, n, f"search_counts.{name}")
        return out

    def extra(self, model: Backbone, ep: EpisodeData) -> dict[str, Any]:
        return {**self._extra, "search": self.options.search}


GROUPED_METHODS = (Grouped, GroupedRandom, GroupedRL)
GROUPED_KINDS = frozenset(cls.kind for cls in GROUPED_METHODS)
