"""Search of the number of groups per layer (the paper's RL step), and its random-search control.

The search space: for each grouped layer, a *menu* of allowed counts (``count_menu``: the fractions
of ``SearchConfig.menu`` of its neurons, deduplicated). A configuration is one count per layer; its
reward is the mean validation accuracy of grouped fine-tuning over the *search* episodes (drawn from
a seed stream independent of the evaluation episodes, and never with test data). With ``tie:
stage`` a choice sets every layer of a backbone stage (:func:`tie_layers`): ResNet-18's twenty
conv layers would make a space of 5^20 configurations that no budget of 16 explores, while its
five stages (stem and four residual stages, 5^5) still let the depth of grouping vary.

- :func:`run_search`: the LSTM controller (:mod:`kshot.controller`) samples a configuration, the
  reward updates it by REINFORCE; repeated.
- :func:`random_search`: uniform configurations; the control that tells whether the controller
  learned anything.

Both spend the same ``budget`` of *evaluations* (fine-tunings, the cost): the reward of a
configuration already tried is taken from a cache (evaluations are deterministic given the seeds),
logged with ``cached: true`` and, for the controller, still used for its update. ``max_samples``
(default ``4 * budget``) bounds the samples drawn, so a policy that has converged onto a tried
configuration ends the search. The search's best configuration is the one with the highest reward
(ties: the first evaluated). The search fine-tunes with the same :class:`FinetuneConfig` the
``grouped_rl`` method uses, so the counts are chosen for the recipe they will be used with (the
params refuse a ``grouped_rl`` method that trains or groups otherwise:
:func:`kshot.params.check_searched_recipe`).

**Selection** (:func:`select_finalists`, ``finalists > 0``): the best of a few hundred validation
images is an optimistic estimate (the winner's curse: with a budget of B noisy rewards, the maximum
is biased upward), and a low-fidelity reward (``steps``) ranks by a shorter fine-tuning than the one
used. So the ``finalists`` configurations with the highest search rewards, plus the *ungrouped*
configuration (one neuron per group: plain fine-tuning, always in the menu's space as fraction 1.0),
are fine-tuned again at full fidelity on separate *selection* episodes (their own seed stream, no
test data), and the one with the highest mean selection reward is chosen (ties: the ungrouped one,
then search order). A grouped configuration with an unstable run (its loss diverged, or ended
above where it began: :func:`unstable_run`, the guard every tuner has) on a search episode is never
a finalist, and on a selection episode never chosen; without finalists, the best stable searched
configuration is chosen (the ungrouped one when none is stable).
``chosen_counts`` is what ``grouped_rl`` uses; it falls back to no grouping when no searched
configuration beats plain fine-tuning on validation data it was not chosen on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from kshot.activations import feature_images, layer_activations
from kshot.config import ControllerConfig, FinetuneConfig, SearchConfig
from kshot.controller import Reinforce
from kshot.episodes import episode_indices, role_seed, seed_name, select
from kshot.errors import ConfigError, DataError
from kshot.finetune import Tensors, init_head
from kshot.grouping import group_neurons, layer_sizes, resolve_count, select_layers
from kshot.models import Backbone
from kshot.population import train_members, train_population


@dataclass(frozen=True)
class Reward:
    """A candidate's mean validation accuracy over some tuning episodes, and whether any of its runs
    there was unstable (:func:`unstable_run`)."""

    value: float
    unstable: bool = False


def unstable_run(diverged_step: int | None, loss_curve: list[list[float]]) -> bool:
    """Whether a training run was unstable: its loss became non-finite (``diverged_step``), or its
    training loss ended higher than at its first measurement (``loss_curve``: ``[step, loss]``)."""
    if diverged_step is not None:
        return True
    return len(loss_curve) >= 2 and loss_curve[-1][1] > loss_curve[0][1]


Evaluate = Callable[[dict[str, int]], float]
# a configuration's reward with whether a run of it was unstable: what the selection stage reads
Assess = Callable[[dict[str, int]], Reward]
Grouper = Callable[[int, dict[str, int]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class SearchEpisode:
    """What the search may see of one search episode: no test set, by construction."""

    support: Tensors
    val: Tensors
    seed: int
    unlabeled: torch.Tensor | None = None
    exclude: list[int] | None = None  # rows of ``unlabeled`` never drawn (its support and val)


@dataclass
class SearchSample:
    """One logged sample. ``baseline``/``loss``/``entropy`` are ``None`` for random search."""

    iteration: int
    actions: list[int]
    counts: dict[str, int]
    reward: float
    cached: bool
    baseline: float | None = None
    loss: float | None = None
    entropy: float | None = None
    # a search run of this configuration was unstable (:func:`unstable_run`): never a finalist,
    # never chosen
    unstable: bool = False


@dataclass
class Finalist:
    """A configuration re-evaluated in the selection stage. ``search_reward`` is ``None`` for the
    ungrouped configuration when the search never sampled it."""

    counts: dict[str, int]
    search_reward: float | None
    select_reward: float
    ungrouped: bool
    unstable: bool = False  # a selection run of it was (never chosen unless ungrouped)


@dataclass
class SearchTrace:
    """Every sample of a search and its outcome (JSON-ready through :meth:`to_dict`)."""

    strategy: str
    layers: list[str]
    menu: dict[str, list[int]]
    budget: int
    samples: list[SearchSample] = field(default_factory=list)
    n_evaluations: int = 0
    best_counts: dict[str, int] = field(default_factory=dict)
    best_reward: float = -math.inf
    greedy_counts: dict[str, int] | None = None
    chosen_counts: dict[str, int] = field(default_factory=dict)
    finalists: list[Finalist] = field(default_factory=list)
    # the search's choices (``layers``) -> the layers each sets ({} or one layer each: untied); the
    # counts above are per choice, :func:`expand_counts` gives them per layer
    units: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_menu(sizes: dict[str, int], fractions: list[float]) -> dict[str, list[int]]:
    """Allowed counts per layer: ``{layer: N}`` -> ``{layer: sorted distinct counts}``."""
    return {
        name: sorted({resolve_count(float(f), n, f"search.menu (layer {name})") for f in fractions})
        for name, n in sizes.items()
    }


def tie_layers(stages: dict[str, str], sizes: dict[str, int], tie: str) -> dict[str, list[str]]:
    """The search's choices over the layers of ``sizes`` (``{layer: neurons}``, in forward order):
    ``{choice: [layers it sets]}``, one per layer (``tie='layer'``) or one per backbone stage
    (``'stage'``, ``stages`` from :meth:`Backbone.stages`); a stage's layers must have equal
    neuron counts, so that one count means the same for each."""
    if tie == "layer":
        return {name: [name] for name in sizes}
    units: dict[str, list[str]] = {}
    for name in sizes:
        units.setdefault(stages[name], []).append(name)
    for unit, members in units.items():
        found = {name: sizes[name] for name in members}
        if len(set(found.values())) > 1:
            raise ConfigError(
                f"search.tie: 'stage' needs the layers of stage '{unit}' to have equal neuron "
                f"counts, found {found}; use tie: layer"
            )
    return units


def expand_counts(counts: dict[str, int], units: dict[str, list[str]]) -> dict[str, int]:
    """Counts per search choice -> counts per layer (``units`` empty: already per layer)."""
    if not units:
        return dict(counts)
    return {name: counts[unit] for unit, members in units.items() if unit in counts for name in members}


def _check_space(layers: list[str], menu: dict[str, list[int]], budget: int) -> None:
    if not layers or set(layers) != set(menu):
        raise ConfigError(f"menu: expected one entry per layer of {layers}, found {sorted(menu)}")
    if budget < 1:
        raise ConfigError(f"budget: expected an integer >= 1, found {budget}")


def _space_size(layers: list[str], menu: dict[str, list[int]]) -> int:
    return math.prod(len(menu[name]) for name in layers)


def _search(
    strategy: str,
    evaluate: Evaluate,
    layers: list[str],
    menu: dict[str, list[int]],
    budget: int,
    draw: Callable[[], tuple[list[int], Any]],
    learn: Callable[[Any, float], dict[str, float]] | None,
    max_samples: int | None,
) -> SearchTrace:
    _check_space(layers, menu, budget)
    trace = SearchTrace(strategy=strategy, layers=list(layers), menu=menu, budget=budget)
    budget = min(budget, _space_size(layers, menu))
    limit = max_samples if max_samples is not None else 4 * budget
    cache: dict[tuple[int, ...], float] = {}
    iteration = 0
    while trace.n_evaluations < budget and iteration < limit:
        actions, handle = draw()
        counts = {name: menu[name][a] for name, a in zip(layers, actions, strict=True)}
        key = tuple(actions)
        cached = key in cache
        if not cached:
            cache[key] = float(evaluate(counts))
            trace.n_evaluations += 1
            if cache[key] > trace.best_reward:
                trace.best_reward, trace.best_counts = cache[key], counts
        reward = cache[key]
        stats = learn(handle, reward) if learn is not None else {}
        trace.samples.append(
            SearchSample(
                iteration=iteration,
                actions=list(actions),
                counts=counts,
                reward=reward,
                cached=cached,
                baseline=stats.get("baseline"),
                loss=stats.get("loss"),
                entropy=stats.get("entropy"),
            )
        )
        iteration += 1
    trace.chosen_counts = dict(trace.best_counts)
    return trace


def select_finalists(
    trace: SearchTrace, assess: Assess, sizes: dict[str, int], finalists: int
) -> SearchTrace:
    """The selection stage: re-evaluate the ungrouped configuration (``sizes``: one group per
    neuron) and the ``finalists`` distinct configurations with the highest search rewards with
    ``assess`` (full fidelity, selection episodes); set ``trace.chosen_counts`` to the best of
    them (ties: the ungrouped one first, then by search rank), a grouped one with an unstable run
    left out, and record every re-evaluation."""
    if finalists < 1:
        raise ConfigError(f"search.finalists: expected an integer >= 1 to select, found {finalists}")
    rewards: dict[tuple[tuple[str, int], ...], tuple[dict[str, int], float]] = {}
    unstable = set()
    for sample in trace.samples:
        key = config_key(sample.counts)
        rewards.setdefault(key, (sample.counts, sample.reward))
        if sample.unstable:
            unstable.add(key)
    ungrouped = {name: sizes[name] for name in trace.layers}
    plain = rewards.pop(config_key(ungrouped), None)  # never among the grouped finalists
    # stable: ties (to 6 decimals, as below) keep search order
    ranked = sorted(
        (cr for key, cr in rewards.items() if key not in unstable), key=lambda cr: -round(cr[1], 6)
    )
    candidates = [(ungrouped, plain[1] if plain else None, True)]
    candidates += [(c, r, False) for c, r in ranked[:finalists]]
    trace.finalists = []
    for c, r, is_ungrouped in candidates:
        reward = assess(c)
        trace.finalists.append(Finalist(dict(c), r, float(reward.value), is_ungrouped, reward.unstable))
    eligible = [f for f in trace.finalists if f.ungrouped or not f.unstable]
    # max keeps the first of ties; rewards are means of float32 accuracies, so equal accuracies can
    # differ in the last bits: a tie is equality to 6 decimals (accuracies are multiples of 1/N)
    best = max(eligible, key=lambda f: round(f.select_reward, 6))
    trace.chosen_counts = dict(best.counts)
    return trace


def config_key(counts: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """A configuration's counts as a hashable key, whatever the order of its layers."""
    return tuple(sorted(counts.items()))


def best_stable(trace: SearchTrace, sizes: dict[str, int]) -> dict[str, int]:
    """The searched configuration with the highest reward among those without an unstable search
    run (ties: the first evaluated); the ungrouped one (``sizes``: one group per neuron) when
    every one had."""
    stable = [s for s in trace.samples if not s.unstable]
    if not stable:
        return {name: sizes[name] for name in trace.layers}
    return dict(max(stable, key=lambda s: s.reward).counts)  # the first of ties, as best_counts


def run_search(
    evaluate: Evaluate,
    layers: list[str],
    menu: dict[str, list[int]],
    budget: int,
    cfg: ControllerConfig,
    seed: int,
    max_samples: int | None = None,
) -> SearchTrace:
    """REINFORCE search over one count per layer of ``layers`` (in forward order) from ``menu``.

    ``evaluate(counts)`` returns the reward of a configuration ``{layer: count}``; it is called at
    most ``budget`` times, once per distinct configuration.
    """
    _check_space(layers, menu, budget)
    ctl = Reinforce([len(menu[name]) for name in layers], cfg, seed)

    def draw():
        s = ctl.sample()
        return s.actions, s

    def learn(s, reward: float) -> dict[str, float]:
        return {**ctl.update(s, reward), "entropy": float(s.entropy.detach())}

    trace = _search("reinforce", evaluate, layers, menu, budget, draw, learn, max_samples)
    trace.greedy_counts = {name: menu[name][a] for name, a in zip(layers, ctl.policy.greedy(), strict=True)}
    return trace


def random_search(
    evaluate: Evaluate,
    layers: list[str],
    menu: dict[str, list[int]],
    budget: int,
    seed: int,
    max_samples: int | None = None,
) -> SearchTrace:
    """Uniformly random configurations with the same budget and caching as :func:`run_search`."""
    gen = torch.Generator().manual_seed(seed)

    def draw():
        return [int(torch.randint(len(menu[n]), (1,), generator=gen)) for n in layers], None

    return _search("random", evaluate, layers, menu, budget, draw, None, max_samples)


def activation_grouper(
    model: Backbone,
    episodes: list[SearchEpisode],
    layers: list[str],
    device: torch.device,
    algorithm: str = "kmeans",
    features: str = "support",
    pool_size: int = 500,
    patterns: list[dict[str, torch.Tensor]] | None = None,
) -> Grouper:
    """``(episode index, counts) -> {layer: assign}`` from the source ``model``'s activations.

    ``patterns``: each episode's ``{layer: [N, M]}`` (the pipeline's activation file); when
    ``None``, activations are computed here, once per episode on first use. Each ``(episode,
    layer, count)`` grouping is made once: configurations share most of their per-layer choices, so
    the cache makes a search's clustering cost grow with the menu, not with the number of samples.
    """
    if patterns is not None and len(patterns) != len(episodes):
        raise DataError(
            f"activation patterns: expected one entry per episode ({len(episodes)}), found {len(patterns)}"
        )
    acts: dict[int, dict[str, torch.Tensor]] = dict(enumerate(patterns or []))
    groups: dict[tuple[int, str, int], torch.Tensor] = {}

    def grouper(index: int, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        ep = episodes[index]
        if index not in acts:
            images = feature_images(ep.support[0], ep.unlabeled, features, pool_size, ep.seed, ep.exclude)
            acts[index] = layer_activations(model, images, layers, device)
        out = {}
        for name, g in counts.items():
            key = (index, name, g)
            if key not in groups:
                groups[key] = group_neurons(acts[index][name], g, algorithm, seed=ep.seed)
            out[name] = groups[key]
        return out

    return grouper


def _member(
    model: Backbone, ep: SearchEpisode, n_classes: int, head_init: str, device: torch.device
) -> Backbone:
    """A copy of the source ``model`` with the head a method would give it on this episode."""
    member = copy.deepcopy(model).to(device)
    init_head(member, n_classes, ep.seed, head_init, ep.support, device)
    return member


def make_evaluator(
    model: Backbone,
    episodes: list[SearchEpisode],
    n_classes: int,
    grouper: Grouper,
    cfg: FinetuneConfig,
    device: torch.device,
    share_bias: bool = True,
    population: bool = True,
) -> Assess:
    """``counts -> Reward``: the mean validation accuracy of grouped fine-tuning over ``episodes``,
    and whether a run was unstable (:func:`unstable_run`).

    Each episode's run is what ``grouped_rl`` would do on it (same head initialisation, seed and
    training loop), and its reward is the validation-selected accuracy that run reports. With
    ``population`` the episodes are fine-tuned as one batched population (their support and
    validation sets must have equal sizes, as the episodes of one k have); otherwise each by its
    own loop, one after another (:func:`kshot.population.train_members`).
    """
    if not episodes:
        raise DataError("search episodes: expected at least one, found none (episodes.search_episodes)")

    def assess(counts: dict[str, int]) -> Reward:
        members = [_member(model, ep, n_classes, cfg.head_init, device) for ep in episodes]
        groupings = [grouper(i, counts) for i in range(len(episodes))]
        supports, vals = [ep.support for ep in episodes], [ep.val for ep in episodes]
        if population:
            res = train_population(members, supports, vals, cfg, device, groupings, share_bias)
            runs = zip(res.val_acc, res.diverged_step, res.loss_curves, strict=True)
        else:
            seeds = [ep.seed for ep in episodes]
            results = train_members(members, supports, vals, cfg, device, groupings, seeds, share_bias)
            runs = ((r.val_acc, r.diverged_step, r.loss_curve) for r in results)
        runs = list(runs)
        return Reward(
            sum(acc for acc, _, _ in runs) / len(episodes),
            any(unstable_run(diverged, curve) for _, diverged, curve in runs),
        )

    return assess


def search_group_counts(
    model: Backbone,
    episodes: list[SearchEpisode],
    n_classes: int,
    cfg: SearchConfig,
    finetune: FinetuneConfig,
    device: torch.device,
    seed: int,
    select: list[SearchEpisode] | None = None,
    patterns: dict[str, list[dict[str, torch.Tensor]]] | None = None,
) -> SearchTrace:
    """The search stage end to end: menu from the model's layers, activation groupings of each
    search episode, evaluator, the configured strategy, then (``cfg.finalists > 0``) the selection
    stage on the ``select`` episodes. ``patterns``: the activation patterns of the ``search`` and
    ``select`` episodes (role -> one ``{layer: [N, M]}`` per episode), or ``None`` to compute them
    here. ``trace.chosen_counts`` is what ``grouped_rl`` takes as ``artifacts['search_counts']``."""
    model = model.to(device).eval()
    if cfg.finalists > 0 and not select:
        raise DataError(
            f"search.finalists: {cfg.finalists} needs selection episodes (episodes.select_episodes >= 1), "
            "found none in the episodes file"
        )
    low = finetune
    if cfg.steps is not None:
        low = replace(finetune, steps=cfg.steps, eval_every=min(finetune.eval_every, cfg.steps))
    layers = select_layers(model, cfg.layers)
    sizes = layer_sizes(model, layers, "search.layers")
    units = tie_layers(model.stages(), sizes, cfg.tie)
    unit_sizes = {unit: sizes[members[0]] for unit, members in units.items()}
    menu = count_menu(unit_sizes, cfg.menu)

    batched = device.type == "cuda" if cfg.population == "auto" else bool(cfg.population)
    batched = batched and finetune.triplet_weight == 0  # the population has no hybrid loss

    def evaluator(role: str, eps: list[SearchEpisode], ft: FinetuneConfig) -> Assess:
        given = None if patterns is None else patterns[role]
        grouper = activation_grouper(
            model, eps, layers, device, cfg.algorithm, cfg.features, cfg.pool_size, given
        )
        per_layer = make_evaluator(model, eps, n_classes, grouper, ft, device, cfg.share_bias, batched)
        return lambda counts: per_layer(expand_counts(counts, units))

    search_assess = evaluator("search", episodes, low)
    unstable = set()

    def evaluate(counts: dict[str, int]) -> float:
        got = search_assess(counts)
        if got.unstable:
            unstable.add(config_key(counts))
        return got.value

    choices = list(units)
    if cfg.strategy == "random":
        trace = random_search(evaluate, choices, menu, cfg.budget, seed, cfg.max_samples)
    else:
        trace = run_search(evaluate, choices, menu, cfg.budget, cfg.controller, seed, cfg.max_samples)
    for sample in trace.samples:
        sample.unstable = config_key(sample.counts) in unstable
    if cfg.finalists > 0:
        select_finalists(trace, evaluator("select", select, finetune), unit_sizes, cfg.finalists)
    else:
        trace.chosen_counts = best_stable(trace, unit_sizes)
    if cfg.tie != "layer":
        trace.units = units
    return trace


def search_episodes(
    ep_file: dict[str, Any],
    pool_x: torch.Tensor,
    pool_y: torch.Tensor,
    benchmark: str,
    seed: int,
    role: str = "search",
    where: str = "episodes file",
) -> list[SearchEpisode]:
    """The search (``role='search'``) or selection (``role='select'``) episodes of an episodes file
    as tensors; selection episodes may be absent (an empty list). ``where``: the file, as an error
    names it.

    They come from their own seed streams (:func:`kshot.episodes.make_episodes`), and their
    fine-tuning seeds are namespaced apart from the evaluation episodes'; the target pool is passed
    as unlabeled images for ``features: support+pool``.
    """
    if role == "search" and not ep_file.get("search"):
        raise DataError(
            f"{where}: expected a non-empty 'search' list (episodes.search_episodes >= 1), "
            f"found {len(ep_file.get('search') or [])} search episodes"
        )
    k = int(ep_file["k"])
    return [
        SearchEpisode(
            select(pool_x, pool_y, e["support"]),
            select(pool_x, pool_y, e["val"]),
            role_seed(seed, seed_name(ep_file, benchmark), role, k, e["id"]),
            pool_x,
            episode_indices(e),
        )
        for e in ep_file.get(role) or []
    ]
