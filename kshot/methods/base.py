"""The interface every k-shot method implements, and the plumbing gradient methods share.

A method receives an :class:`EpisodeData` (a fresh copy of the pre-trained source network and the
episode's support, validation and test tensors) and returns an :class:`EpisodeResult`. Methods are
registered by kind in :data:`kshot.methods.METHODS`; ``params.yaml`` names them under ``methods:``
as ``name: {kind: ..., <options>}``, so one kind can appear several times with other options.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from kshot.alignment import AlignmentProbe
from kshot.config import FinetuneConfig, from_dict
from kshot.errors import ConfigError
from kshot.finetune import Tensors, TrainHook, TrainResult, accuracy, init_head, train
from kshot.models import Backbone


@dataclass
class EpisodeData:
    """Everything a method may use for one episode. Only ``support`` and ``val`` may guide
    training or selection; ``test`` is for the final evaluation alone."""

    model: Backbone
    support: Tensors
    val: Tensors
    test: Tensors
    n_classes: int
    seed: int
    device: torch.device
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpisodeResult:
    """Accuracies and diagnostics of one method on one episode (all JSON-serialisable)."""

    test_acc: float
    val_acc: float
    steps: int = 0
    best_step: int = 0
    diverged_step: int | None = None
    train_time_s: float = 0.0
    val_curve: list[list[float]] = field(default_factory=list)
    loss_curve: list[list[float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_train(cls, res: TrainResult, test_acc: float, **extra: Any) -> EpisodeResult:
        """The result of a gradient run ``res`` whose selected state scored ``test_acc``."""
        return cls(
            test_acc=test_acc,
            val_acc=res.val_acc,
            steps=res.steps_run,
            best_step=res.best_step,
            diverged_step=res.diverged_step,
            train_time_s=res.train_time_s,
            val_curve=res.val_curve,
            loss_curve=res.loss_curve,
            extra=extra,
        )

    def metrics(self) -> dict[str, Any]:
        """The deterministic part (no timings), written to the metrics files."""
        d = dataclasses.asdict(self)
        del d["train_time_s"]
        return d


@dataclass(frozen=True)
class TrainOverrides:
    """Per-method overrides of the shared ``finetune`` block (``None`` keeps the shared value)."""

    steps: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    eval_every: int | None = None
    head_init: str | None = None
    triplet_weight: float | None = None
    triplet_margin: float | None = None


class Method(ABC):
    """A k-shot strategy. Subclasses set ``kind`` and ``Options`` and implement :meth:`run`."""

    kind: ClassVar[str]
    Options: ClassVar[type] = TrainOverrides
    # True for methods that see the unlabeled test images while adapting (transductive inference):
    # every table marks them, since they use information the inductive methods do not
    transductive: ClassVar[bool] = False
    # whether the method trains the features a triplet term shapes (finetune.triplet_weight)
    trains_features: ClassVar[bool] = False

    def __init__(self, options: Any, finetune: FinetuneConfig, name: str | None = None) -> None:
        self.options = options
        # the params field its errors name: methods.<name> (the kind where no name is given)
        self.where = f"methods.{name}" if name else self.kind
        overrides = {
            f.name: getattr(options, f.name)
            for f in dataclasses.fields(TrainOverrides)
            if getattr(options, f.name, None) is not None
        }
        self.cfg = from_dict(FinetuneConfig, {**dataclasses.asdict(finetune), **overrides}, "finetune")

    @classmethod
    def parse_options(cls, raw: dict[str, Any], where: str) -> Any:
        """Validate ``methods.<name>`` options against this kind's ``Options`` dataclass."""
        return from_dict(cls.Options, raw, where)

    @abstractmethod
    def run(self, ep: EpisodeData) -> EpisodeResult:
        """Adapt to ``ep.support`` (selecting on ``ep.val``) and report test accuracy."""


def check_probed(method: Method) -> None:
    """Refuse the alignment probe (:mod:`kshot.alignment`) for ``method`` unless it fine-tunes its
    layers through :class:`GradientMethod`'s loop, the one the probe rides."""
    if not (
        isinstance(method, GradientMethod)
        and type(method).run is GradientMethod.run
        and method.trains_features
    ):
        raise ConfigError(
            f"--alignment-every: expected a method that fine-tunes its layers in the shared training "
            f"loop (full, grouped, l2sp, ...), found {method.where} of kind '{method.kind}'"
        )


class GradientMethod(Method):
    """Replace the head, fine-tune the parameters :meth:`trainable` returns with the loop of
    :func:`kshot.finetune.train` changed by the :meth:`hooks`, evaluate on test."""

    trains_features = True

    def trainable(self, model: Backbone) -> list[torch.Tensor]:
        return list(model.parameters())

    def hooks(self, model: Backbone, ep: EpisodeData) -> list[TrainHook]:
        """How this method changes the training loop (made after the new head is in place)."""
        return []

    def extra(self, model: Backbone, ep: EpisodeData) -> dict[str, Any]:
        """Diagnostics of the episode (after :meth:`test_accuracy`), into ``EpisodeResult.extra``."""
        return {}

    def test_accuracy(self, model: Backbone, ep: EpisodeData) -> float:
        """The trained ``model``'s accuracy on the test images (the episode's one pass over them)."""
        return accuracy(model, *ep.test, ep.device)

    def run(self, ep: EpisodeData) -> EpisodeResult:
        model = ep.model.to(ep.device)
        init_head(model, ep.n_classes, ep.seed, self.cfg.head_init, ep.support, ep.device)
        hooks = self.hooks(model, ep)
        # the alignment study's probe (kshot.alignment): measures, changes nothing
        probe = None
        if ep.artifacts.get("alignment_every") is not None:
            check_probed(self)
            probe = AlignmentProbe(
                model.groupable(), ep.support, ep.device, ep.artifacts["alignment_every"], self.cfg.steps
            )
            hooks = [*hooks, probe]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ep.seed)
            res: TrainResult = train(
                model, self.trainable(model), ep.support, ep.val, self.cfg, ep.device, hooks=hooks
            )
        test_acc = self.test_accuracy(res.model, ep)
        extra = self.extra(model, ep)
        if probe is not None:
            extra["alignment"] = probe.log
        return EpisodeResult.from_train(res, test_acc, **extra)
