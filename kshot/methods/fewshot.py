"""Few-shot classifiers on frozen features, taken from easyfsl: SimpleShot, PT-MAP and TIM.

The classifiers are easyfsl's (Sicara, *easy-few-shot-learning* 1.5.0,
https://github.com/sicara/easy-few-shot-learning), used as a dependency, not re-implemented. With
``f(x)`` the source network's penultimate features of image ``x``:

- ``simpleshot`` -- Wang, Chao, Weinberger and van der Maaten, "SimpleShot: Revisiting
  Nearest-Neighbor Classification for Few-Shot Learning", arXiv:1911.04623 (2019). Features are
  centred and normalised, ``g(x) = (f(x) - m) / ||f(x) - m||_p``; the prototype ``mu_c`` is the
  mean of ``g`` over the support images of class ``c``; a query goes to ``argmax_c cos(g(x), mu_c)``.
  Inductive.
- ``pt_map`` -- Hu, Gripon and Pateux, "Leveraging the Feature Distribution in Transfer-based
  Few-Shot Learning", ICANN 2021 (arXiv:2006.03806). Features are normalised, then power
  transformed, ``h = (relu(g) + 1e-6) ** beta``. Starting from the support prototypes, each of
  ``fine_tuning_steps`` steps assigns the queries softly to the prototypes by optimal transport
  (Sinkhorn on ``exp(-lambda ||h - mu_c||^2)`` with equal class marginals) and moves each
  prototype by ``fine_tuning_lr`` towards the mean of support and query features weighted by their
  (one-hot or soft) assignments. Queries take the class of their largest final assignment.
  Transductive.
- ``tim`` -- Boudiaf, Masud, Rony, Dolz, Piantanida and Ben Ayed, "Transductive Information
  Maximization For Few-Shot Learning", NeurIPS 2020 (arXiv:2008.11297). Logits are
  ``T cos(g(x), w_c)``; the prototypes ``w`` (from the support means) are trained by Adam for
  ``fine_tuning_steps`` steps on ``a CE(support) - (b H(Y_q) - c H(Y_q | X_q))``: support
  cross-entropy, minus the mutual information between queries and their predicted labels (the
  marginal entropy ``H(Y_q)`` keeps classes balanced, the conditional entropy ``H(Y_q | X_q)``
  makes predictions confident). Transductive.

Transductive methods (``transductive = True``: PT-MAP and TIM) see the unlabeled query images, the
test images included, while they adapt: a prediction depends on the other images classified with
it. They use information the inductive methods do not, and every table marks them.

Choices the papers leave open, and kshot's:

- Features are the frozen source network's penultimate features (``model.features``: LeNet's
  post-ReLU fc1 output, ``[N, D]``), computed once per episode; easyfsl is given them through an
  identity backbone, never an image. The backbone is never trained.
- The validation and the test set are separate query sets: each is classified by a classifier of
  its own, fresh from the support set (easyfsl's PT-MAP and TIM change their prototypes in place
  while classifying), so test predictions never depend on the validation images or the reverse.
  Nothing is selected on the validation accuracy here; it is reported, as for every method.
- Defaults are the options of easyfsl's own benchmark (``scripts/methods_configs.json`` of its
  repository, L2 normalisation included), which differ from its constructors' defaults (PT-MAP
  10 steps at rate 0.2; TIM rate 1e-4 and conditional-entropy weight 0.1).
- PT-MAP's power transform needs non-negative features (easyfsl rectifies them first): kshot's
  are post-ReLU, so nothing is clipped, which is why PT-MAP is offered no centring. easyfsl
  normalises before the power transform (the paper after); kept as easyfsl has it. Its Sinkhorn
  gives each class ``n_query // n_classes`` of the mass, i.e. assumes a class-balanced query set:
  the Fashion-MNIST test split is (1000 per class), the digits split nearly so. The transport
  starts from ``exp(-lambda d^2)``: without normalisation (``feature_normalization: null``) the
  squared distances of LeNet features reach ~100 and, at ``lambda`` 10, underflow to zero in
  float32 for most queries, so keep the normalisation or lower ``lambda`` with it.
- Determinism: none of the three draws random numbers (no initialisation, no sampling; TIM's Adam
  starts from the support prototypes), so a run is a function of the features and options alone
  and needs no seed.
- The classifiers run on the CPU whatever ``ep.device`` (only the features are computed there):
  they are a few small matrix products per step, and PT-MAP's Sinkhorn loop tests convergence on
  the host at every iteration. They print nothing (easyfsl's tqdm bars are in its evaluation
  loops, which kshot does not use) and need no GPU.
"""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from kshot.errors import ConfigError, DataError, check_choice
from kshot.finetune import Tensors, predict
from kshot.methods.base import EpisodeData, EpisodeResult, Method

# easyfsl is imported where a classifier is made: importing it loads torchvision, about 2 s that
# every pipeline job would pay at start-up for the registry alone
if TYPE_CHECKING:
    from easyfsl.methods import FewShotClassifier

CENTERING = ("none", "support")


def _check(where: str, name: str, value: float | int | None, expected: str, ok: bool) -> None:
    if not ok:
        raise ConfigError(f"{where}.{name}: expected {expected}, found {value!r}")


def _check_normalization(where: str, value: float | None) -> None:
    _check(where, "feature_normalization", value, "a norm order > 0 or null", value is None or value > 0)


def _check_steps_and_lr(where: str, steps: int, lr: float) -> None:
    _check(where, "fine_tuning_steps", steps, "an integer >= 0", steps >= 0)
    _check(where, "fine_tuning_lr", lr, "a number > 0", lr > 0)


class EasyFSLMethod(Method):
    """Classify the validation and the test set, each as its own query set, with the easyfsl
    classifier :meth:`classifier` builds over the frozen source network's penultimate features."""

    @abstractmethod
    def classifier(self, support: torch.Tensor) -> FewShotClassifier:
        """A fresh easyfsl classifier with an identity backbone; ``support``: features ``[S, D]``."""

    def run(self, ep: EpisodeData) -> EpisodeResult:
        labels = ep.support[1]
        present = sorted(int(c) for c in labels.unique())
        if present != list(range(ep.n_classes)):
            # easyfsl numbers the classes from the support labels: each class needs a support image
            raise DataError(
                f"{self.where}: expected support images of every class 0..{ep.n_classes - 1}, "
                f"found classes {present}"
            )
        model = ep.model.to(ep.device).eval()
        support = predict(model.features, ep.support[0], ep.device)  # [S, D]
        elapsed = 0.0

        def acc(query: Tensors) -> float:
            nonlocal elapsed
            feats = predict(model.features, query[0], ep.device)  # [Q, D]
            start = time.perf_counter()
            clf = self.classifier(support)
            with torch.no_grad():  # TIM enables gradients for its own prototypes
                clf.process_support_set(support, labels)
                scores = clf(feats)  # [Q, n_classes]
            elapsed += time.perf_counter() - start
            return float((scores.argmax(1) == query[1]).float().mean())

        val_acc = acc(ep.val)
        return EpisodeResult(test_acc=acc(ep.test), val_acc=val_acc, train_time_s=elapsed)


@dataclass(frozen=True)
class SimpleShotOptions:
    """``feature_normalization``: the order ``p`` of the norm features are divided by (null: not
    normalised); ``feature_centering``: ``none``, or ``support`` to subtract the mean support
    feature first (the paper's CL2N centres on the mean base-class feature, which an episode does
    not carry; the support mean keeps the method inductive). The defaults make ``simpleshot`` the
    ``centroid`` method."""

    feature_normalization: float | None = 2.0
    feature_centering: str = "none"

    def validate(self, where: str) -> None:
        _check_normalization(where, self.feature_normalization)
        check_choice(f"{where}.feature_centering", self.feature_centering, CENTERING)


class SimpleShotMethod(EasyFSLMethod):
    kind = "simpleshot"
    Options = SimpleShotOptions
    transductive = False

    def classifier(self, support: torch.Tensor) -> FewShotClassifier:
        from easyfsl.methods import SimpleShot

        centre = support.mean(0) if self.options.feature_centering == "support" else None  # [D]
        return SimpleShot(
            nn.Identity(),
            feature_centering=centre,
            feature_normalization=self.options.feature_normalization,
        )


@dataclass(frozen=True)
class PTMapOptions:
    """easyfsl's ``PTMAP`` options, under its names: prototype refinement steps and rate, the
    Sinkhorn entropic regularisation ``lambda``, the power ``beta`` and the feature norm order."""

    fine_tuning_steps: int = 30
    fine_tuning_lr: float = 0.3
    lambda_regularization: float = 10.0
    power_factor: float = 0.5
    feature_normalization: float | None = 2.0

    def validate(self, where: str) -> None:
        _check_steps_and_lr(where, self.fine_tuning_steps, self.fine_tuning_lr)
        for name in ("lambda_regularization", "power_factor"):
            value = getattr(self, name)
            _check(where, name, value, "a number > 0", value > 0)
        _check_normalization(where, self.feature_normalization)


class PTMapMethod(EasyFSLMethod):
    kind = "pt_map"
    Options = PTMapOptions
    transductive = True

    def classifier(self, support: torch.Tensor) -> FewShotClassifier:
        from easyfsl.methods import PTMAP

        return PTMAP(nn.Identity(), **dataclasses.asdict(self.options))  # easyfsl's own names


@dataclass(frozen=True)
class TIMOptions:
    """easyfsl's ``TIM`` options, under its names: Adam steps and rate on the prototypes, the
    weights of the support cross-entropy and of the queries' marginal and conditional entropies,
    the logits' temperature and the feature norm order."""

    fine_tuning_steps: int = 50
    fine_tuning_lr: float = 1e-3
    cross_entropy_weight: float = 1.0
    marginal_entropy_weight: float = 1.0
    conditional_entropy_weight: float = 0.5
    temperature: float = 10.0
    feature_normalization: float | None = 2.0

    def validate(self, where: str) -> None:
        _check_steps_and_lr(where, self.fine_tuning_steps, self.fine_tuning_lr)
        for name in ("cross_entropy_weight", "marginal_entropy_weight", "conditional_entropy_weight"):
            value = getattr(self, name)
            _check(where, name, value, "a number >= 0", value >= 0)
        _check(where, "temperature", self.temperature, "a number > 0", self.temperature > 0)
        _check_normalization(where, self.feature_normalization)


class TIMMethod(EasyFSLMethod):
    kind = "tim"
    Options = TIMOptions
    transductive = True

    def classifier(self, support: torch.Tensor) -> FewShotClassifier:
        from easyfsl.methods import TIM

        return TIM(nn.Identity(), **dataclasses.asdict(self.options))  # easyfsl's own names


FEWSHOT_METHODS: tuple[type[EasyFSLMethod], ...] = (SimpleShotMethod, PTMapMethod, TIMMethod)
