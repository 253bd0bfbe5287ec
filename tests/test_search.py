import copy

import pytest
import torch
from tiny_nets import tiny_lenet, tiny_task

from kshot.config import ControllerConfig, FinetuneConfig, SearchConfig, from_dict
from kshot.errors import ConfigError, DataError
from kshot.finetune import init_head, train
from kshot.grouping import group_neurons
from kshot.search import (
    Reward,
    SearchEpisode,
    activation_grouper,
    best_stable,
    count_menu,
    make_evaluator,
    random_search,
    run_search,
    search_group_counts,
    select_finalists,
)

CPU = torch.device("cpu")
LAYERS = ["a", "b", "c"]
MENU = {"a": [1, 2, 4, 8], "b": [1, 2, 4, 8], "c": [2, 4, 8]}
TARGET = {"a": 4, "b": 1, "c": 8}


class Counted:
    """A deterministic toy reward that counts its calls per configuration."""

    def __init__(self, flat: bool = False):
        self.calls: dict[tuple, int] = {}
        self.flat = flat

    def __call__(self, counts: dict[str, int]) -> float:
        key = tuple(sorted(counts.items()))
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.flat:
            return 0.5
        return 1.0 - sum(abs(counts[n] - TARGET[n]) for n in LAYERS) / 20


@pytest.mark.parametrize("strategy", ["reinforce", "random"])
def test_search_spends_its_budget_on_distinct_configurations(strategy):
    # a flat reward keeps the policy exploring, so it must reach the budget
    reward = Counted(flat=strategy == "reinforce")
    if strategy == "reinforce":
        trace = run_search(reward, LAYERS, MENU, 15, ControllerConfig(), seed=0)
    else:
        trace = random_search(reward, LAYERS, MENU, 15, seed=0)
    assert trace.n_evaluations == 15 == len(reward.calls)
    assert set(reward.calls.values()) == {1}  # never re-evaluated
    assert sum(not s.cached for s in trace.samples) == 15
    assert all(s.reward == reward(s.counts) for s in trace.samples)
    assert trace.best_reward == max(s.reward for s in trace.samples)
    assert reward(trace.best_counts) == trace.best_reward
    assert all(s.counts[n] in MENU[n] for s in trace.samples for n in LAYERS)


def test_controller_samples_log_baseline_loss_and_entropy():
    trace = run_search(Counted(), LAYERS, MENU, 6, ControllerConfig(), seed=1)
    row = trace.to_dict()["samples"][1]
    assert set(row) >= {
        "iteration",
        "actions",
        "counts",
        "reward",
        "baseline",
        "loss",
        "entropy",
        "cached",
    }
    assert row["baseline"] is not None and row["entropy"] > 0
    assert trace.greedy_counts is not None and set(trace.greedy_counts) == set(LAYERS)


def test_search_stops_when_the_space_is_exhausted():
    menu = {"a": [1, 2], "b": [1, 3]}
    reward = Counted()
    trace = random_search(lambda c: reward({**c, "c": 8}), ["a", "b"], menu, 50, seed=0)
    assert trace.n_evaluations == 4


def test_search_is_reproducible_from_the_seed():
    t1 = run_search(Counted(), LAYERS, MENU, 8, ControllerConfig(), seed=5)
    t2 = run_search(Counted(), LAYERS, MENU, 8, ControllerConfig(), seed=5)
    assert t1.to_dict() == t2.to_dict()


def test_controller_concentrates_on_rewarding_configurations():
    trace = run_search(Counted(), LAYERS, MENU, 40, ControllerConfig(), seed=0, max_samples=400)
    early = sum(s.reward for s in trace.samples[:10]) / 10
    late = sum(s.reward for s in trace.samples[-10:]) / 10
    assert late > early + 0.1
    assert trace.best_reward >= 0.9


def test_count_menu_deduplicates_fractions_per_layer():
    menu = count_menu({"conv1": 5, "fc1": 100}, [0.0625, 0.125, 0.25, 0.5, 1.0])
    assert menu == {"conv1": [1, 3, 5], "fc1": [6, 13, 25, 50, 100]}


def search_episodes(n=2):
    return [
        SearchEpisode(tiny_task(3, 2, seed=s), tiny_task(3, 3, seed=50 + s), seed=100 + s) for s in range(n)
    ]


def test_evaluator_batched_and_sequential_agree_and_match_plain_finetuning():
    model, eps = tiny_lenet(n_classes=4), search_episodes()
    cfg = FinetuneConfig(steps=4, lr=0.05, eval_every=2)
    grouper = activation_grouper(model, eps, model.groupable(), CPU)
    counts = {"conv1": 2, "conv2": 3, "fc1": 10}
    batched = make_evaluator(model, eps, 3, grouper, cfg, CPU, population=True)
    looped = make_evaluator(model, eps, 3, grouper, cfg, CPU, population=False)
    one, other = batched(counts), looped(counts)
    assert one.value == pytest.approx(other.value) and one.unstable == other.unstable
    full = {"conv1": 5, "conv2": 12, "fc1": 125}
    plain = []
    for ep in eps:
        m = copy.deepcopy(model)
        init_head(m, 3, ep.seed, "random", ep.support, CPU)
        plain.append(train(m, list(m.parameters()), ep.support, ep.val, cfg, CPU).val_acc)
    assert looped(full).value == pytest.approx(sum(plain) / 2)


def test_evaluations_leave_the_source_model_untouched():
    model, eps = tiny_lenet(n_classes=4), search_episodes()
    before = copy.deepcopy(model.state_dict())
    grouper = activation_grouper(model, eps, model.groupable(), CPU)
    make_evaluator(model, eps, 3, grouper, FinetuneConfig(steps=2), CPU)({"conv1": 1, "fc1": 5})
    for name, w in model.state_dict().items():
        assert torch.equal(w, before[name])


def test_grouper_caches_each_episode_layer_and_count():
    model, eps = tiny_lenet(n_classes=4), search_episodes()
    grouper = activation_grouper(model, eps, ["fc1"], CPU)
    a = grouper(0, {"fc1": 7})
    assert grouper(0, {"fc1": 7})["fc1"] is a["fc1"]
    assert int(a["fc1"].max()) == 6


def test_search_stage_end_to_end_returns_counts_from_the_menu():
    model, eps = tiny_lenet(n_classes=4), search_episodes()
    cfg = from_dict(SearchConfig, {"budget": 3, "menu": [0.25, 1.0]}, "search")
    trace = search_group_counts(model, eps, 3, cfg, FinetuneConfig(steps=2, eval_every=1), CPU, 0)
    assert trace.n_evaluations == 3
    assert set(trace.best_counts) == {"conv1", "conv2", "fc1"}
    for name, g in trace.best_counts.items():
        assert g in trace.menu[name]


SIZES = {"a": 8, "b": 8, "c": 8}
UNGROUPED = dict(SIZES)


def ranked_keys(trace):
    """Distinct sampled configurations (as sorted tuples), best search reward first."""
    rewards = {tuple(sorted(s.counts.items())): s.reward for s in trace.samples}
    return [key for key, _ in sorted(rewards.items(), key=lambda kv: -kv[1])]


def test_selection_reevaluates_the_top_finalists_and_the_ungrouped_configuration():
    trace = random_search(Counted(), LAYERS, MENU, 10, seed=0)
    ranked = ranked_keys(trace)
    seen = []
    select_finalists(trace, lambda c: seen.append(dict(c)) or Reward(0.5), SIZES, finalists=3)
    assert seen[0] == UNGROUPED and len(seen) == 4
    assert [tuple(sorted(c.items())) for c in seen[1:]] == [k for k in ranked if dict(k) != UNGROUPED][:3]
    assert [f.ungrouped for f in trace.finalists] == [True, False, False, False]
    # all tie: the ungrouped configuration wins, so grouping is used only when it does better
    assert trace.chosen_counts == UNGROUPED
    assert trace.best_counts != UNGROUPED  # the search's own best is kept for the record


def test_selection_picks_the_finalist_with_the_best_selection_reward_not_the_best_search_reward():
    trace = random_search(Counted(), LAYERS, MENU, 10, seed=0)
    third = ranked_keys(trace)[2]
    select_finalists(
        trace, lambda c: Reward(0.9 if tuple(sorted(c.items())) == third else 0.6), SIZES, finalists=3
    )
    assert tuple(sorted(trace.chosen_counts.items())) == third
    assert max(f.select_reward for f in trace.finalists) == 0.9
    assert trace.to_dict()["finalists"][0]["ungrouped"] is True


def test_a_grouped_finalist_with_an_unstable_selection_run_is_never_chosen_but_the_ungrouped_one_may_be():
    trace = random_search(Counted(), LAYERS, MENU, 10, seed=0)
    third = ranked_keys(trace)[2]

    def assess(counts, unstable):
        key = tuple(sorted(counts.items()))
        return Reward(0.9 if key == third else 0.6, unstable(key))

    select_finalists(trace, lambda c: assess(c, lambda key: key == third), SIZES, finalists=3)
    assert trace.chosen_counts == UNGROUPED  # the best, but unstable: the default stays
    assert [f.unstable for f in trace.finalists] == [False, False, False, True]
    select_finalists(trace, lambda c: assess(c, lambda key: key != third), SIZES, finalists=3)
    assert tuple(sorted(trace.chosen_counts.items())) == third  # stable: chosen; others unstable
    assert trace.finalists[0].unstable  # the ungrouped one, unstable, stays eligible
    select_finalists(trace, lambda c: assess(c, lambda key: True), SIZES, finalists=3)
    assert trace.chosen_counts == UNGROUPED  # every finalist unstable: the ungrouped one remains


def test_a_configuration_unstable_on_a_search_episode_is_never_a_finalist():
    trace = random_search(Counted(), LAYERS, MENU, 10, seed=0)
    grouped = [k for k in ranked_keys(trace) if dict(k) != UNGROUPED]
    for sample in trace.samples:
        sample.unstable = tuple(sorted(sample.counts.items())) == grouped[0]
    select_finalists(trace, lambda c: Reward(0.5), SIZES, finalists=3)
    assert [tuple(sorted(f.counts.items())) for f in trace.finalists[1:]] == grouped[1:4]


def test_without_finalists_the_search_chooses_its_best_stable_configuration():
    model, eps = tiny_lenet(n_classes=4), search_episodes()
    cfg = from_dict(SearchConfig, {"budget": 3, "menu": [0.25, 1.0]}, "search")
    trace = search_group_counts(model, eps, 3, cfg, FinetuneConfig(steps=3, eval_every=1), CPU, 0)
    assert not any(s.unstable for s in trace.samples) and trace.chosen_counts == trace.best_counts
    # every run diverges: no searched configuration is chosen over plain fine-tuning
    trace = search_group_counts(model, eps, 3, cfg, FinetuneConfig(steps=3, eval_every=1, lr=1e30), CPU, 0)
    assert all(s.unstable for s in trace.samples) and trace.best_counts != UNGROUPED_TINY
    assert trace.chosen_counts == UNGROUPED_TINY
    assert trace.to_dict()["samples"][0]["unstable"] is True
    for i, sample in enumerate(trace.samples):  # two stable configurations: the better is chosen
        sample.unstable, sample.reward = i == 0, [0.9, 0.4, 0.6][i]
    assert len({str(s.counts) for s in trace.samples}) == 3
    assert best_stable(trace, UNGROUPED_TINY) == trace.samples[2].counts


UNGROUPED_TINY = {"conv1": 5, "conv2": 12, "fc1": 125}  # tiny_lenet's layers, one neuron per group


def test_population_auto_runs_the_sequential_loop_on_cpu():
    model, eps = tiny_lenet(n_classes=4), search_episodes()
    ft = FinetuneConfig(steps=3, eval_every=1)

    def trace(population):
        cfg = from_dict(SearchConfig, {"budget": 3, "menu": [0.25, 1.0], "population": population}, "s")
        return search_group_counts(model, eps, 3, cfg, ft, CPU, 0).to_dict()

    assert trace("auto") == trace(False)


def test_search_stage_with_selection_episodes_chooses_among_finalists():
    model, eps = tiny_lenet(n_classes=4), search_episodes()
    select = search_episodes(3)[1:]
    cfg = from_dict(SearchConfig, {"budget": 3, "menu": [0.25, 1.0], "finalists": 2, "steps": 1}, "search")
    ft = FinetuneConfig(steps=3, eval_every=1)
    trace = search_group_counts(model, eps, 3, cfg, ft, CPU, 0, select)
    assert len(trace.finalists) == 3
    assert trace.chosen_counts in [f.counts for f in trace.finalists]
    assert trace.finalists[0].counts == {"conv1": 5, "conv2": 12, "fc1": 125}
    # the ungrouped configuration's selection reward is plain fine-tuning's on the selection episodes
    grouper = activation_grouper(model, select, model.groupable(), CPU)
    plain = make_evaluator(model, select, 3, grouper, ft, CPU)(trace.finalists[0].counts)
    assert trace.finalists[0].select_reward == pytest.approx(plain.value)
    with pytest.raises(DataError, match=r"search.finalists: 2 needs selection episodes \(episodes.select_ep"):
        search_group_counts(model, eps, 3, cfg, ft, CPU, 0, [])


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"strategy": "evolution"}, "strategy"),
        ({"budget": 0}, "budget"),
        ({"menu": [0.5, 2.0]}, r"menu\[1\]"),
        ({"controller": {"lr": -1.0}}, r"controller\.lr"),
        ({"finalists": -1}, "finalists"),
        ({"population": "sometimes"}, "population"),
    ],
)
def test_search_config_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=rf"search\.{field}"):
        from_dict(SearchConfig, raw, "search")


def test_search_from_an_activation_file_equals_computing_activations_in_process():
    from kshot.activations import feature_images, layer_activations

    model, eps = tiny_lenet(n_classes=4), search_episodes()
    select = search_episodes(3)[1:]
    cfg = from_dict(SearchConfig, {"budget": 3, "menu": [0.25, 1.0], "finalists": 1, "steps": 1}, "search")
    ft = FinetuneConfig(steps=2, eval_every=1)

    def patterns(episodes):
        return [
            layer_activations(
                model, feature_images(e.support[0], None, "support", 1, e.seed), model.groupable(), CPU
            )
            for e in episodes
        ]

    given = {"search": patterns(eps), "select": patterns(select)}
    # the grouper clusters the patterns it is given, not activations of its own
    other = [{name: torch.rand(a.shape) for name, a in p.items()} for p in given["search"]]
    grouper = activation_grouper(model, eps, model.groupable(), CPU, patterns=other)
    assert torch.equal(grouper(0, {"fc1": 7})["fc1"], group_neurons(other[0]["fc1"], 7, seed=eps[0].seed))
    staged = search_group_counts(model, eps, 3, cfg, ft, CPU, 0, select, given).to_dict()
    assert staged == search_group_counts(model, eps, 3, cfg, ft, CPU, 0, select).to_dict()
    with pytest.raises(
        DataError, match=r"activation patterns: expected one entry per episode \(2\), found 1"
    ):
        search_group_counts(model, eps, 3, cfg, ft, CPU, 0, select, {**given, "search": given["search"][:1]})
