import copy

import pytest
import torch

from kshot.errors import ConfigError
from kshot.files.prepared import load_prepared, save_prepared
from kshot.io import read_json
from kshot.jobs import job_params
from kshot.params import params_from_dict, parse_method
from kshot.runner import StageInputs, run_episodes, tune_stage
from kshot.tuning import Reward, grid_candidates, tune, unstable_run
from tests.conftest import TINY_PARAMS
from tests.upstream import build_upstream


def l2sp_spec(**tune):
    return parse_method("l2sp", {"kind": "l2sp", "alpha": 0.01, "beta": 0.01, "tune": tune})


def params_with(name, spec):
    raw = copy.deepcopy(TINY_PARAMS)
    raw["methods"][name] = spec
    return raw


# --- the grid -------------------------------------------------------------------------------------


def test_candidates_are_the_grid_product_in_the_order_written():
    assert grid_candidates({"a": [1, 2], "b": [3, 4]}) == [
        {"a": 1, "b": 3},
        {"a": 1, "b": 4},
        {"a": 2, "b": 3},
        {"a": 2, "b": 4},
    ]


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"alpha": []}, r"methods\.l2sp\.tune\.alpha: expected a non-empty list of candidates, found \[\]"),
        (
            {"alpha": [0.1, -1]},
            r"methods\.l2sp\.tune\.alpha\[1\]: methods\.l2sp\.alpha: expected a number >= 0",
        ),
        ({"alfa": [0.1]}, r"methods\.l2sp\.tune\.alfa: expected an option of kind 'l2sp'"),
        (
            {"alpha": [0.1, 1.0], "lr": [0.01, 0.1]},
            r"methods\.l2sp\.tune: expected at most 3 candidates \(search\.budget",
        ),
        ({"alpha": 0.1}, r"methods\.l2sp\.tune: expected a mapping of option names to lists"),
    ],
)
def test_a_bad_grid_is_a_one_line_error_naming_the_field(tune, message):
    raw = params_with("l2sp", {"kind": "l2sp", "tune": tune})  # the tiny params' budget is 3
    with pytest.raises(ConfigError, match=message) as err:
        params_from_dict(raw)
    assert "\n" not in str(err.value)


def test_a_grouped_kind_refuses_a_grid_its_search_tunes():
    raw = params_with("grouped", {"kind": "grouped", "groups": 0.5, "tune": {"groups": [0.25]}})
    with pytest.raises(ConfigError, match=r"methods\.grouped\.tune: expected no grid for grouped kind"):
        params_from_dict(raw)


def test_a_tuned_name_exists_only_for_a_method_with_a_grid():
    raw = params_with("l2sp", {"kind": "l2sp", "tune": {"alpha": [0.1, 1.0]}})
    raw["run"]["methods"] = ["l2sp", "l2sp+tuned"]
    assert params_from_dict(raw).method("l2sp+tuned").kind == "l2sp"
    raw["run"]["methods"] = ["centroid+tuned"]
    with pytest.raises(ConfigError, match=r"run\.methods\[0\]: unknown .*'centroid\+tuned'"):
        params_from_dict(raw)


# --- the choice -----------------------------------------------------------------------------------


def fake_reward(search, select):
    """A reward reading the candidate's alpha off two tables (search and selection episodes)."""
    calls = []

    def reward(options, role, low):
        calls.append((options.alpha, role, low))
        return Reward((search if role == "search" else select)[options.alpha])

    return reward, calls


def test_the_best_finalist_on_the_selection_episodes_is_chosen_not_the_best_search_reward():
    spec = l2sp_spec(alpha=[0.1, 1.0, 10.0])
    reward, calls = fake_reward({0.1: 0.9, 1.0: 0.8, 10.0: 0.1}, {0.01: 0.5, 0.1: 0.6, 1.0: 0.7})
    trace = tune("l2sp", "l2sp", spec.options, spec.tune, 16, 2, reward, {"alpha": 0.01})
    assert trace.chosen == {"alpha": 1.0}
    assert [c for c in calls if c[1] == "search"] == [
        (0.1, "search", True),
        (1.0, "search", True),
        (10.0, "search", True),
    ]
    assert sorted(c[0] for c in calls if c[1] == "select") == [0.01, 0.1, 1.0]  # the default, then 2 best
    assert [t.default for t in trace.trials] == [False, False, False, True]


def test_ties_on_the_selection_episodes_keep_the_defaults():
    spec = l2sp_spec(alpha=[0.1, 1.0])
    reward, _ = fake_reward({0.1: 0.9, 1.0: 0.8}, {0.01: 0.7, 0.1: 0.7, 1.0: 0.7})
    trace = tune("l2sp", "l2sp", spec.options, spec.tune, 16, 2, reward, {"alpha": 0.01})
    assert trace.chosen == {"alpha": 0.01}


def test_a_grid_no_larger_than_the_finalists_skips_the_screening():
    spec = l2sp_spec(alpha=[0.01, 0.1, 1.0])  # the default 0.01 and 2 others: all are finalists
    reward, calls = fake_reward({}, {0.01: 0.5, 0.1: 0.6, 1.0: 0.55})
    trace = tune("l2sp", "l2sp", spec.options, spec.tune, 16, 2, reward, {"alpha": 0.01})
    assert trace.chosen == {"alpha": 0.1}
    assert sorted(calls) == [(0.01, "select", False), (0.1, "select", False), (1.0, "select", False)]
    assert [t.search_reward for t in trace.trials] == [None, None, None]
    reward, calls = fake_reward({0.01: 0.5, 0.1: 0.6, 1.0: 0.55}, {0.01: 0.5, 0.1: 0.6})
    tune("l2sp", "l2sp", spec.options, spec.tune, 16, 1, reward, {"alpha": 0.01})
    assert sum(role == "search" for _, role, _ in calls) == 3  # one finalist: the grid is screened


def unstable_reward(search, select, unstable):
    """``fake_reward`` whose runs of the alphas in ``unstable`` are unstable: (role, alpha) pairs."""

    def reward(options, role, low):
        table = search if role == "search" else select
        return Reward(table[options.alpha], (role, options.alpha) in unstable)

    return reward


def test_a_candidate_unstable_on_a_tuning_run_is_never_chosen_over_the_default():
    spec = l2sp_spec(alpha=[0.1, 1.0, 10.0])
    search, select = {0.1: 0.9, 1.0: 0.8, 10.0: 0.7}, {0.01: 0.5, 0.1: 0.6, 1.0: 0.7, 10.0: 0.65}

    def choose(unstable, finalists=2):
        reward = unstable_reward(search, select, unstable)
        default = {"alpha": 0.01} if finalists else None
        return tune("l2sp", "l2sp", spec.options, spec.tune, 16, finalists, reward, default)

    # 1.0 wins the selection but its loss rose on a selection run: the next stable one is chosen
    trace = choose({("select", 1.0)})
    assert trace.chosen == {"alpha": 0.1}
    assert [t.unstable for t in trace.trials if t.select_reward is not None] == [False, True, False]
    # unstable on a search run: not even a finalist, its place taken by the next
    trace = choose({("search", 0.1)})
    assert trace.chosen == {"alpha": 1.0} and trace.trials[0].select_reward is None
    assert trace.trials[2].select_reward == 0.65
    # every other candidate unstable: the default, unstable or not
    everything = {(r, a) for r in ("search", "select") for a in (0.01, 0.1, 1.0, 10.0)}
    assert choose(everything).chosen == {"alpha": 0.01}
    assert choose({("search", 0.1)}, finalists=0).chosen == {"alpha": 1.0}
    # without finalists, every grid candidate unstable and the default (0.01) outside the grid
    assert choose({("search", a) for a in search}, finalists=0).chosen == {"alpha": 0.01}


def test_a_run_is_unstable_when_its_loss_diverges_or_ends_above_where_it_started():
    assert unstable_run(7, [[5, 0.9]])
    assert unstable_run(None, [[10, 0.9], [20, 0.4], [30, 1.2]])
    assert not unstable_run(None, [[10, 0.9], [20, 1.1], [30, 0.3]])
    assert not unstable_run(None, [[10, 0.9]]) and not unstable_run(None, [])


def test_without_finalists_the_best_search_reward_is_chosen():
    spec = l2sp_spec(alpha=[0.1, 1.0])
    reward, calls = fake_reward({0.1: 0.5, 1.0: 0.8}, {})
    trace = tune("l2sp", "l2sp", spec.options, spec.tune, 16, 0, reward)
    assert trace.chosen == {"alpha": 1.0} and all(role == "search" for _, role, _ in calls)


def test_a_grid_that_tunes_steps_is_rewarded_at_full_fidelity():
    spec = parse_method("full", {"kind": "full", "tune": {"steps": [2, 4]}})
    seen = []
    tune("full", "full", spec.options, spec.tune, 16, 0, lambda o, role, low: seen.append(low) or Reward(0.5))
    assert seen == [False, False]


# --- the stage on real files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    return build_upstream(tmp_path_factory.mktemp("upstream"), copy.deepcopy(TINY_PARAMS))


def run_tune(upstream, out, target=None, spec=None):
    params = params_from_dict(TINY_PARAMS)
    spec = spec or l2sp_spec(alpha=[0.0, 1.0, 100.0])
    inputs = StageInputs(upstream["ckpt"], target or upstream["target"], upstream["episodes"])
    tune_stage("tiny", "l2sp", spec, params.finetune, params.search, 0, 1, inputs, out, torch.device("cpu"))
    return read_json(out)


def test_the_tuning_never_reads_test_data(tmp_path, upstream):
    d = load_prepared(upstream["target"], ("meta", "pool_x", "pool_y", "test_x", "test_y"))
    poisoned = dict(d)
    poisoned["test_y"] = (d["test_y"] + 1) % 5  # every test label wrong, and the test images noise
    poisoned["test_x"] = torch.randint(0, 256, d["test_x"].shape, dtype=torch.uint8)
    save_prepared(tmp_path / "poisoned.pt", poisoned)
    clean = run_tune(upstream, tmp_path / "a.json")
    dirty = run_tune(upstream, tmp_path / "b.json", target=tmp_path / "poisoned.pt")
    assert clean == dirty
    assert len(clean["trials"]) == 4 and clean["chosen"]["alpha"] in (0.0, 0.01, 1.0, 100.0)
    assert all(0.0 <= t["search_reward"] <= 1.0 for t in clean["trials"] if t["search_reward"] is not None)


def test_the_tuned_run_uses_the_chosen_options_under_its_own_name(tmp_path, upstream):
    trace = run_tune(upstream, tmp_path / "tune.json")
    params = params_from_dict(TINY_PARAMS)
    summary = run_episodes(
        benchmark="tiny",
        method_name="l2sp",
        spec=l2sp_spec(alpha=[0.0, 1.0, 100.0]),
        finetune=params.finetune,
        k=1,
        inputs=StageInputs(upstream["ckpt"], upstream["target"], upstream["episodes"]),
        out_dir=tmp_path / "run",
        seed=0,
        device=torch.device("cpu"),
        tuning=tmp_path / "tune.json",
    )
    assert summary["method"] == "l2sp+tuned" and {e["method"] for e in summary["episodes"]} == {"l2sp+tuned"}
    assert trace["method"] == "l2sp"


def test_a_tuned_runs_fingerprint_ignores_the_grid_and_the_tune_job_reads_it():
    raw = params_with("l2sp", {"kind": "l2sp", "tune": {"alpha": [0.1, 1.0]}})
    other = params_with("l2sp", {"kind": "l2sp", "tune": {"alpha": [0.1, 10.0]}})
    a, b = params_from_dict(raw), params_from_dict(other)
    for method in ("l2sp", "l2sp+tuned"):
        assert job_params(a, "finetune", method=method) == job_params(b, "finetune", method=method)
    assert job_params(a, "tune", method="l2sp") != job_params(b, "tune", method="l2sp")
    assert job_params(a, "tune", method="l2sp")["search"] == {"budget": 3, "steps": None, "finalists": 1}
