"""One tuning budget for every method: a grid of hyper-parameter candidates, chosen on validation data.

A method entry of the params may carry a grid, ``tune: {option: [candidates], ...}``, over any of
its kind's options (the learning rate, a regularisation weight, steps, ...). The grid's candidates
are the product of its lists, in the order written, and there may be at most ``budget`` of them:
the budget ``B`` is the grouped search's (``search.budget``), so a tuned method is given no more
evaluations than grouping's search of its group counts. The tuning stage (:func:`tune`) then does
what the search does, with the same episodes and the same fidelity:

1. every candidate is evaluated once on the *search* episodes: its reward is the mean validation
   accuracy of the method run with the candidate's options (at ``search.steps`` fine-tuning steps
   when the grid does not tune ``steps``, a low-fidelity reward as the search's). A grid with no
   more candidates besides the default than ``finalists`` skips this screening, which could not
   change what step 2 re-checks: all its candidates go to step 2;
2. the ``finalists`` candidates with the highest rewards, plus the *default* candidate (the options
   as written, the untuned method), are run again at full fidelity on the *selection* episodes;
3. the finalist with the highest mean selection accuracy is chosen (ties: the default, then the
   grid order), so tuning falls back to the defaults when no candidate beats them on data it was
   not ranked on.

**The stability guard.** A candidate whose training was *unstable* on any of its tuning runs
(search or selection episodes) is never chosen over the default: unstable is a non-finite loss, or a
training loss that ends higher than it was at the first measurement (:func:`unstable_run`). A
learning rate at the edge of divergence can win on four selection episodes and collapse on some of
the ten evaluation ones (seen: ``full+tuned`` at lr 0.1, 3 of 10 episodes below half its mean); the
rising loss is the sign that is there on the tuning episodes too. The default stays eligible: it is
what the untuned method runs anyway.

No test image reaches a tuning run: its episodes (:class:`kshot.search.SearchEpisode`) have none,
and the method's test slot holds the validation set, whose accuracy is never read. The evaluation
episodes then run the chosen options only (``<method>+tuned`` in the tables).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kshot.config import TUNED, FinetuneConfig, from_dict
from kshot.errors import ConfigError, DataError
from kshot.methods import METHODS, EpisodeData, GradientMethod
from kshot.methods.grouped import GROUPED_KINDS
from kshot.models import Backbone
from kshot.search import Reward, SearchEpisode, unstable_run


def tuned_name(method: str) -> str:
    return f"{method}{TUNED}"


def base_name(method: str) -> str:
    """``l2sp+tuned`` -> ``l2sp``; a name without the suffix is returned as it is."""
    return method.removesuffix(TUNED)


def tunable(kind: str) -> bool:
    """Whether method ``kind`` has options a grid could tune."""
    return bool(dataclasses.fields(METHODS[kind].Options))


def grid_candidates(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The candidates of ``grid`` (option -> values), the product of its lists in the order
    written: ``{a: [1, 2], b: [3]}`` -> ``[{a: 1, b: 3}, {a: 2, b: 3}]``."""
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def check_grid(kind: str, options: Any, grid: dict[str, list[Any]], budget: int, where: str) -> None:
    """Raise :class:`ConfigError` naming ``<where>.tune...`` for a grid that names an option the kind
    lacks, has an empty list, a candidate its ``Options`` refuses, or more candidates than ``budget``.
    """
    cls = METHODS[kind]
    if grid and kind in GROUPED_KINDS:
        raise ConfigError(
            f"{where}.tune: expected no grid for grouped kind '{kind}' (its group counts are tuned by "
            "the search, kind grouped_rl, under the same budget), found one"
        )
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    base = dataclasses.asdict(options)
    for name, values in grid.items():
        if name not in fields:
            raise ConfigError(
                f"{where}.tune.{name}: expected an option of kind '{kind}' ({sorted(fields) or 'none'}), "
                f"found '{name}'"
            )
        if not values:
            raise ConfigError(f"{where}.tune.{name}: expected a non-empty list of candidates, found []")
        for i, value in enumerate(values):
            try:
                from_dict(cls.Options, {**base, name: value}, where)
            except ConfigError as err:
                raise ConfigError(f"{where}.tune.{name}[{i}]: {err}") from err
    n = math.prod(len(v) for v in grid.values())
    if n > budget:
        sizes = " x ".join(f"{len(v)} {name}" for name, v in grid.items())
        raise ConfigError(
            f"{where}.tune: expected at most {budget} candidates (search.budget, the budget of every "
            f"tuner), found {n} ({sizes})"
        )


def with_candidate(kind: str, options: Any, candidate: dict[str, Any], where: str) -> Any:
    """``options`` (a kind's parsed ``Options``) with the values of ``candidate``."""
    return from_dict(METHODS[kind].Options, {**dataclasses.asdict(options), **candidate}, where)


@dataclass
class Trial:
    """One candidate's rewards: mean validation accuracy on the search episodes (``None``: not
    screened, the default candidate outside the grid or a grid small enough to skip the
    screening) and on the selection episodes (``None``: not a finalist); ``unstable``: some run of
    it was (:func:`unstable_run`), which bars it from being chosen unless it is the default."""

    candidate: dict[str, Any]
    search_reward: float | None
    select_reward: float | None = None
    default: bool = False
    unstable: bool = False


@dataclass
class TuneTrace:
    """What a tuning stage did (JSON-ready through :meth:`to_dict`); ``chosen`` is the candidate
    the evaluation episodes run."""

    method: str
    kind: str
    grid: dict[str, list[Any]]
    budget: int
    trials: list[Trial] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def method_reward(
    name: str,
    kind: str,
    options: Any,
    finetune: FinetuneConfig,
    model: Backbone,
    episodes: list[SearchEpisode],
    n_classes: int,
    device: torch.device,
    steps: int | None = None,
) -> Reward:
    """Mean validation accuracy of method ``kind`` with ``options`` over ``episodes`` (``steps``:
    fine-tuning steps instead of the method's own, for a low-fidelity reward), and whether a run
    was unstable."""
    if not episodes:
        raise DataError("tuning episodes: expected at least one, found none (episodes.search_episodes)")
    method = METHODS[kind](options, finetune, name)
    if steps is not None and isinstance(method, GradientMethod):
        method.cfg = dataclasses.replace(
            method.cfg, steps=steps, eval_every=min(method.cfg.eval_every, steps)
        )
    total, unstable = 0.0, False
    for ep in episodes:
        data = EpisodeData(
            model=copy.deepcopy(model),
            support=ep.support,
            val=ep.val,
            test=ep.val,  # no test image is ever given to a tuning run; its test accuracy is unread
            n_classes=n_classes,
            seed=ep.seed,
            device=device,
            artifacts={"unlabeled": ep.unlabeled, "unlabeled_exclude": ep.exclude},
        )
        result = method.run(data)
        total += result.val_acc
        unstable |= unstable_run(result.diverged_step, result.loss_curve)
    return Reward(total / len(episodes), unstable)


def default_candidate(options: Any, grid: dict[str, list[Any]], finetune: FinetuneConfig) -> dict[str, Any]:
    """The values the method runs with untuned, for the options of ``grid``: an option left unset
    (``None``, e.g. ``lr``) takes the shared ``finetune`` block's value, as the method does."""
    shared = dataclasses.asdict(finetune)
    out = {}
    for option in grid:
        value = getattr(options, option)
        out[option] = shared[option] if value is None and option in shared else value
    return out


def tune(
    name: str,
    kind: str,
    options: Any,
    grid: dict[str, list[Any]],
    budget: int,
    finalists: int,
    reward: Callable[[Any, str, bool], Reward],
    default: dict[str, Any] | None = None,
) -> TuneTrace:
    """The tuning stage of method ``name`` (the module docstring). ``reward(options, role,
    low_fidelity)`` returns the :class:`Reward` of the method with ``options`` on the
    ``'search'`` or ``'select'`` episodes; ``finalists``: how many of the best candidates are
    re-checked with the ``default`` candidate (:func:`default_candidate`; ``None``: the values of
    ``options``) on the selection episodes (0: the best search reward of a stable candidate is
    chosen as it is, the defaults when none is stable)."""
    where = f"methods.{name}"
    check_grid(kind, options, grid, budget, where)
    if not grid:
        raise ConfigError(f"{where}.tune: expected a grid of candidates to tune, found none")
    trace = TuneTrace(method=name, kind=kind, grid=grid, budget=budget)
    low = "steps" not in grid
    if default is None:
        default = {option: getattr(options, option) for option in grid}
    candidates = grid_candidates(grid)
    screen = finalists == 0 or sum(c != default for c in candidates) > finalists
    for candidate in candidates:
        trial = Trial(candidate, None)
        if screen:
            got = reward(with_candidate(kind, options, candidate, where), "search", low)
            trial.search_reward, trial.unstable = float(got.value), got.unstable
        trace.trials.append(trial)

    def eligible(t: Trial) -> bool:
        return t.candidate == default or not t.unstable

    # stable: ties (to 6 decimals, as below) keep the grid order
    ranked = sorted(trace.trials, key=lambda t: -round(t.search_reward or 0.0, 6))
    if finalists == 0:  # every candidate unstable and the defaults not among them: the defaults
        trace.chosen = dict(next((t.candidate for t in ranked if eligible(t)), default))
        return trace
    checked = [t for t in ranked if t.candidate != default and eligible(t)][:finalists]
    plain = next((t for t in trace.trials if t.candidate == default), None)
    if plain is None:
        plain = Trial(default, None)
        trace.trials.append(plain)
    plain.default = True
    for trial in [plain, *checked]:
        got = reward(with_candidate(kind, options, trial.candidate, where), "select", False)
        trial.select_reward, trial.unstable = float(got.value), trial.unstable or got.unstable
    # max keeps the first of ties; rewards are means of float32 accuracies, so equal accuracies
    # can differ in the last bits: a tie is equality to 6 decimals (accuracies are multiples of 1/N)
    best = max([t for t in [plain, *checked] if eligible(t)], key=lambda t: round(t.select_reward or 0.0, 6))
    trace.chosen = dict(best.candidate)
    return trace
