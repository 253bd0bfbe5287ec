"""The hybrid loss: cross-entropy plus a batch-hard triplet term on the penultimate features."""

import copy

import pytest
import torch

from kshot.config import FinetuneConfig, with_replicates
from kshot.errors import ConfigError
from kshot.finetune import check_triplet, train, triplet_term
from kshot.methods import METHODS
from kshot.params import params_from_dict
from kshot.population import train_population
from tests.conftest import TINY_PARAMS
from tests.test_methods import episode

CPU = torch.device("cpu")


def test_the_triplet_term_is_zero_for_classes_apart_by_more_than_the_margin_and_the_margin_when_collapsed():
    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert float(triplet_term(apart, labels, margin=0.2)) == pytest.approx(0.0)
    collapsed = torch.ones(4, 2)
    assert float(triplet_term(collapsed, labels, margin=0.2)) == pytest.approx(0.2, abs=1e-5)


def test_the_triplet_term_mines_the_farthest_positive_and_the_nearest_negative():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # anchors 0-2: farthest positive at 2, nearest negative at sqrt(2); anchors 3-4: positive at 0
    hard = max(2.0 - 2**0.5 + 0.1, 0.0)
    assert float(triplet_term(feats, labels, margin=0.1)) == pytest.approx(3 * hard / 5, abs=1e-4)


def make(kind, **options):
    cls = METHODS[kind]
    return cls(cls.parse_options(options, f"methods.{kind}"), FinetuneConfig(steps=6, eval_every=2))


def test_a_zero_weight_is_plain_cross_entropy_and_a_positive_one_changes_the_run(tiny_model):
    plain = make("full").run(episode(tiny_model, k=3))
    zero = make("full", triplet_weight=0.0).run(episode(tiny_model, k=3))
    hybrid = make("full", triplet_weight=1.0, triplet_margin=1.5).run(episode(tiny_model, k=3))
    assert zero.loss_curve == plain.loss_curve
    assert hybrid.loss_curve != plain.loss_curve
    grouped = make("grouped", groups=0.5, triplet_weight=1.0, triplet_margin=1.5).run(
        episode(tiny_model, k=3)
    )
    assert grouped.loss_curve != make("grouped", groups=0.5).run(episode(tiny_model, k=3)).loss_curve


def test_the_linear_probe_ignores_the_term_exactly_since_its_features_are_fixed(tiny_model):
    plain = make("linear").run(episode(tiny_model, k=3))
    hybrid = make("linear", triplet_weight=1.0, triplet_margin=1.5).run(episode(tiny_model, k=3))
    assert hybrid.loss_curve == plain.loss_curve and hybrid.test_acc == plain.test_acc


def test_a_triplet_term_at_k1_is_an_error_naming_the_field(tiny_model):
    with pytest.raises(ConfigError, match=r"^triplet_weight: expected 0 at k = 1 .*found 0.5$"):
        make("full", triplet_weight=0.5).run(episode(tiny_model, k=1))
    check_triplet(torch.tensor([0, 1, 2]), 0.0)  # off: nothing to check


def test_the_params_refuse_a_triplet_term_when_k1_runs_naming_the_field_that_asks_for_it():
    raw = copy.deepcopy(TINY_PARAMS)
    assert 1 in raw["episodes"]["k"]
    full = next(m for m in raw["run"]["methods"] if m == "full")
    bad = copy.deepcopy(raw)
    bad["finetune"]["triplet_weight"] = 0.1
    with pytest.raises(
        ConfigError, match=r"^finetune.triplet_weight: expected 0, since method .full. runs at k = 1"
    ):
        params_from_dict(bad)
    bad = copy.deepcopy(raw)
    bad["methods"][full]["triplet_weight"] = 0.1
    with pytest.raises(
        ConfigError, match=rf"^methods.{full}.triplet_weight: expected 0.*method '{full}' runs"
    ):
        params_from_dict(bad)
    ok = copy.deepcopy(raw)
    ok["methods"][full]["triplet_weight"] = 0.1
    ok["episodes"]["k"] = [2, 3]
    assert params_from_dict(ok).methods[full].options.triplet_weight == 0.1


def test_the_batched_population_refuses_a_triplet_term(tiny_model):
    ep = episode(tiny_model, k=3)
    cfg = FinetuneConfig(steps=2, eval_every=1, triplet_weight=0.1)
    with pytest.raises(ConfigError, match=r"^triplet_weight: expected 0 for a batched population"):
        train_population([ep.model], [ep.support], [ep.val], cfg, CPU)
    model = copy.deepcopy(ep.model)
    assert train(model, list(model.parameters()), ep.support, ep.val, cfg, CPU).steps_run == 2


@pytest.mark.parametrize(
    ("study", "block"),
    [
        ("run", {}),
        ("resnet_peers", {}),
        ("resnet_replicates", {"seeds": [3], "pairs": []}),
        ("alignment", {}),
    ],
)
def test_a_study_block_runs_at_its_own_k_and_only_at_shots_the_episodes_have(study, block):
    raw = copy.deepcopy(TINY_PARAMS)
    raw["episodes"]["k"] = [1, 2]
    raw["methods"]["full_triplet"] = {"kind": "full", "triplet_weight": 0.5}
    bench = raw["run"]["benchmarks"][0]
    raw[study] = {**block, "benchmarks": [bench], "methods": ["full_triplet"], "k": [2]}
    assert getattr(load(raw), study).k == [2]
    raw[study]["k"] = None  # every k: a triplet term at k = 1
    with pytest.raises(ConfigError, match=r"^methods.full_triplet.triplet_weight: expected 0, since method"):
        load(raw)
    raw[study]["k"] = [2, 5]
    with pytest.raises(ConfigError, match=rf"^{study}.k\[1\]: unknown value '5'"):
        load(raw)
    raw[study]["k"] = []  # not "every k": an error
    with pytest.raises(ConfigError, match=rf"^{study}.k: expected k values of episodes.k \[1, 2\]"):
        load(raw)
    raw[study]["k"] = [2, 2]  # each run file listed twice would fail the report at the end
    with pytest.raises(ConfigError, match=rf"^{study}.k: expected distinct values, found \[2, 2\]"):
        load(raw)


def test_the_source_effect_study_runs_its_methods_at_every_k():
    raw = copy.deepcopy(TINY_PARAMS)
    raw["methods"]["full_triplet"] = {"kind": "full", "triplet_weight": 0.5}
    raw["source_effect"] = {"methods": ["full_triplet"]}
    with pytest.raises(ConfigError, match=r"^methods.full_triplet.triplet_weight: expected 0, since method"):
        load(raw)


def load(raw):
    """The params of ``raw`` with its replicate studies' sources and benchmarks, as the pipeline
    reads them."""
    return params_from_dict(with_replicates(raw))


def test_a_regime_block_runs_the_hybrid_loss_at_its_own_k_and_only_at_shots_the_episodes_have():
    raw = copy.deepcopy(TINY_PARAMS)
    raw["episodes"]["k"] = [1, 2]
    raw["methods"]["full_triplet"] = {"kind": "full", "triplet_weight": 0.5}
    bench = raw["run"]["benchmarks"][0]
    raw["regime"] = {"runs": [{"benchmarks": [bench], "methods": ["full_triplet"], "k": [2]}], "pairs": []}
    assert params_from_dict(raw).regime.runs[0].k == [2]
    raw["regime"]["runs"][0]["k"] = None
    with pytest.raises(ConfigError, match=r"^methods.full_triplet.triplet_weight: expected 0, since method"):
        params_from_dict(raw)
    raw["regime"]["runs"][0]["k"] = [2, 5]
    with pytest.raises(ConfigError, match=r"^regime.runs\[0\].k\[1\]: unknown value '5'"):
        params_from_dict(raw)
    raw["regime"]["runs"][0]["k"] = []
    with pytest.raises(ConfigError, match=r"^regime.runs\[0\].k: expected k values of episodes.k"):
        params_from_dict(raw)
