import copy

import pytest
import yaml

from kshot.errors import ConfigError
from kshot.params import load_params, params_from_dict
from tests.conftest import REPO, TINY_PARAMS


def test_default_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.run.benchmarks == ["fashion", "fashion_to_digits"]
    assert params.episodes.k == [1, 5, 10]
    assert params.run.k == [1, 5]  # the default run within its 15 minutes; the studies run k = 10


def test_unknown_top_level_key_names_the_key_and_suggests_the_nearest(tiny_params):
    tiny_params["finetun"] = {}
    with pytest.raises(ConfigError, match=r"unknown key 'finetun'.*did you mean 'finetune'"):
        params_from_dict(tiny_params)


def test_unknown_method_in_run_suggests_the_nearest_name(tiny_params):
    tiny_params["run"]["methods"] = ["ful"]
    with pytest.raises(ConfigError, match=r"run.methods\[0\].*'ful'.*did you mean 'full'"):
        params_from_dict(tiny_params)


def test_unknown_method_kind_is_reported_with_its_field(tiny_params):
    tiny_params["methods"]["full"] = {"kind": "fulll", "tune": {"lr": [0.01]}}
    with pytest.raises(ConfigError, match=r"methods.full.kind.*'fulll'.*did you mean 'full'"):
        params_from_dict(tiny_params)


def test_unknown_backbone_and_dataset_are_reported(tiny_params):
    bad = dict(tiny_params, sources={"s": {**tiny_params["sources"]["digits04"], "backbone": "lenett"}})
    bad["benchmarks"] = {"tiny": {**tiny_params["benchmarks"]["tiny"], "source": "s"}}
    with pytest.raises(ConfigError, match=r"sources.s.backbone.*did you mean 'lenet'"):
        params_from_dict(bad)
    tiny_params["benchmarks"]["tiny"]["target"] = "digitz"
    with pytest.raises(ConfigError, match=r"benchmarks.tiny.target.*did you mean 'digits'"):
        params_from_dict(tiny_params)


@pytest.mark.parametrize(
    ("k", "pattern"),
    [
        (0, r"episodes.k\[0\].*>= 1.*found 0"),
        (-3, r"episodes.k\[0\].*found -3"),
        (1.5, r"episodes.k\[0\].*integer.*found 1.5"),
    ],
)
def test_bad_k_is_rejected_with_field_and_value(tiny_params, k, pattern):
    tiny_params["episodes"]["k"] = [k]
    with pytest.raises(ConfigError, match=pattern):
        params_from_dict(tiny_params)


def test_empty_and_duplicate_class_lists_are_rejected(tiny_params):
    tiny_params["benchmarks"]["tiny"]["target_classes"] = []
    with pytest.raises(ConfigError, match=r"benchmarks.tiny.target_classes.*at least 2"):
        params_from_dict(tiny_params)
    tiny_params["benchmarks"]["tiny"]["target_classes"] = [5, 5, 6]
    with pytest.raises(ConfigError, match=r"target_classes.*duplicates"):
        params_from_dict(tiny_params)


def test_method_option_of_wrong_type_names_the_field(tiny_params):
    tiny_params["methods"]["l2sp"]["alpha"] = "big"
    with pytest.raises(ConfigError, match=r"methods.l2sp.alpha.*number.*'big'"):
        params_from_dict(tiny_params)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match=r"params.yaml.*valid YAML"):
        load_params(path)


def test_missing_params_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml.*found nothing"):
        load_params(tmp_path / "nope.yaml")


def test_negative_learning_rate_is_rejected(tiny_params):
    tiny_params["finetune"]["lr"] = -0.1
    with pytest.raises(ConfigError, match=r"finetune.lr.*> 0.*-0.1"):
        params_from_dict(tiny_params)


def test_params_yaml_round_trips_through_yaml(tiny_params, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny_params))
    params = load_params(path)
    assert params == params_from_dict(tiny_params)
    for name, raw in tiny_params["methods"].items():
        spec = params.methods[name]
        assert spec.kind == raw["kind"]
        assert all(getattr(spec.options, k) == v for k, v in raw.items() if k not in ("kind", "tune"))
        assert spec.tune == raw.get("tune", {})


def test_local_dirs_key_that_is_not_a_torchvision_dataset_suggests_the_nearest(tiny_params):
    tiny_params["data"]["local_dirs"] = {"mnsit": "/data/mnist"}
    with pytest.raises(
        ConfigError, match=r"data.local_dirs.mnsit: unknown value 'mnsit'.*did you mean 'mnist'"
    ):
        params_from_dict(tiny_params)


def test_replicates_add_a_source_and_benchmark_per_seed_and_refuse_what_cannot_be():
    from kshot.config import replicate_benchmarks, with_replicates

    raw = copy.deepcopy(TINY_PARAMS)
    raw["replicates"] = {"seeds": [1, 2], "benchmarks": ["tiny"], "methods": ["full"], "pairs": []}
    out = with_replicates(raw)
    assert "digits04_seed1" not in raw["sources"]  # a new mapping; the given one is unchanged
    assert out["sources"]["digits04_seed2"] == {**raw["sources"]["digits04"], "seed": 2}
    assert out["benchmarks"]["tiny_seed1"] == {**raw["benchmarks"]["tiny"], "source": "digits04_seed1"}
    assert with_replicates(out) == out  # idempotent
    assert replicate_benchmarks(params_from_dict(out)) == {
        "tiny": ("tiny", 0),
        "tiny_seed1": ("tiny", 1),
        "tiny_seed2": ("tiny", 2),
    }

    both = {**raw, "resnet_replicates": {**raw["replicates"], "seeds": [2, 3]}}
    out = with_replicates(both)  # a second study shares seed 2's replicate, adds seed 3's
    assert out["benchmarks"]["tiny_seed3"] == {**raw["benchmarks"]["tiny"], "source": "digits04_seed3"}
    assert list(replicate_benchmarks(params_from_dict(out), "resnet_replicates")) == [
        "tiny",
        "tiny_seed2",
        "tiny_seed3",
    ]
    with pytest.raises(ConfigError, match=r"resnet_replicates\.seeds: expected seeds other than 0"):
        params_from_dict(
            with_replicates({**raw, "resnet_replicates": {"seeds": [0], "benchmarks": ["tiny"]}})
        )

    clash = copy.deepcopy(raw)
    clash["benchmarks"]["tiny_seed1"] = {"source": "digits04", "target": "digits", "target_classes": [5, 6]}
    with pytest.raises(ConfigError, match=r"'tiny_seed1' free for a replicate, found benchmarks\.tiny_seed1"):
        with_replicates(clash)
    for block, message in (
        ({"seeds": [0]}, "replicates.seeds: expected seeds other than 0"),
        ({"seeds": [1, 1]}, "replicates.seeds: expected distinct integers"),
        ({"methods": ["fulll"]}, "replicates.methods\\[0\\]: unknown value 'fulll'"),
        ({"pairs": [["grouped", "full"]]}, "replicates.pairs\\[0\\]\\[0\\]: unknown value 'grouped'"),
        ({"benchmarks": ["tinny"]}, "replicates.benchmarks\\[0\\]: unknown value 'tinny'"),
    ):
        bad = copy.deepcopy(raw)
        bad["replicates"].update(block)
        with pytest.raises(ConfigError, match=message):
            params_from_dict(with_replicates(bad))


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        (
            {"steps": 300},
            r"^methods.grouped_rl.steps: expected no override \(the search chose the counts with",
        ),
        ({"triplet_weight": 0.5}, r"^methods.grouped_rl.triplet_weight: expected no override"),
        ({"features": "support+pool"}, r"^methods.grouped_rl.features: expected 'support', as the search's"),
        (
            {"algorithm": "agglomerative"},
            r"^methods.grouped_rl.algorithm: expected 'kmeans', as the search's",
        ),
        ({"rectify": False}, r"^methods.grouped_rl.rectify: expected True, as the search's groupings"),
    ],
)
def test_a_searched_method_must_train_and_group_as_its_search_did(tiny_params, option, pattern):
    tiny_params["methods"]["grouped_rl"].update(option)
    with pytest.raises(ConfigError, match=pattern):
        params_from_dict(tiny_params)


def test_a_searched_method_may_group_as_a_search_configured_otherwise(tiny_params):
    tiny_params["search"] = {**tiny_params.get("search", {}), "features": "support+pool"}
    tiny_params["methods"]["grouped_rl"]["features"] = "support+pool"
    assert params_from_dict(tiny_params).methods["grouped_rl"].options.features == "support+pool"
