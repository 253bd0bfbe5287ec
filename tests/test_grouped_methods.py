import copy

import pytest
import torch
from tiny_nets import tiny_images, tiny_lenet, tiny_task

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError, DataError
from kshot.methods.base import EpisodeData
from kshot.methods.full import FullFinetune
from kshot.methods.grouped import GROUPED_METHODS, Grouped, GroupedRandom, GroupedRL

CPU = torch.device("cpu")
CFG = FinetuneConfig(steps=4, lr=0.05, eval_every=2)
SOURCE = tiny_lenet(n_classes=4)


def episode(**artifacts) -> EpisodeData:
    return EpisodeData(
        model=copy.deepcopy(SOURCE),
        support=tiny_task(3, 2, seed=1),
        val=tiny_task(3, 2, seed=2),
        test=tiny_task(3, 4, seed=3),
        n_classes=3,
        seed=7,
        device=CPU,
        artifacts=artifacts,
    )


def method(cls, **options):
    return cls(cls.parse_options(options, "methods.m"), CFG)


def test_grouped_kinds_are_exported_with_distinct_names():
    assert [c.kind for c in GROUPED_METHODS] == ["grouped", "grouped_random", "grouped_rl"]


def test_grouped_reports_counts_and_cluster_quality():
    res = method(Grouped, groups=0.5, features="support").run(episode())
    assert res.extra["counts"] == {"conv1": 3, "conv2": 6, "fc1": 63}
    assert res.extra["n_feature_images"] == 6
    q = res.extra["quality"]["fc1"]
    assert q["n_groups"] == 63 and q["n_neurons"] == 125
    assert 0.0 <= res.test_acc <= 1.0 and res.steps == 4


def test_one_group_per_neuron_reproduces_full_finetuning():
    full = FullFinetune(FullFinetune.parse_options({}, "methods.full"), CFG).run(episode())
    grouped = method(Grouped, groups=1.0).run(episode())
    assert grouped.val_curve == full.val_curve
    assert grouped.loss_curve == full.loss_curve
    assert grouped.test_acc == full.test_acc


def test_grouping_changes_the_fine_tuning_trajectory():
    full = FullFinetune(FullFinetune.parse_options({}, "methods.full"), CFG).run(episode())
    grouped = method(Grouped, groups=2).run(episode())
    assert grouped.loss_curve != full.loss_curve


def test_per_layer_counts_group_only_the_named_layers():
    res = method(Grouped, groups={"fc1": 10, "conv2": 0.25}).run(episode())
    assert res.extra["counts"] == {"conv2": 3, "fc1": 10}


def test_random_membership_keeps_group_sizes_and_lowers_intra_group_correlation():
    ep_pool = {"unlabeled": tiny_images(60, seed=9)}
    opts = {"groups": {"fc1": 8}, "features": "support+pool", "pool_size": 40}
    gna = method(Grouped, **opts).run(episode(**ep_pool)).extra["quality"]["fc1"]
    rnd = method(GroupedRandom, **opts).run(episode(**ep_pool)).extra["quality"]["fc1"]
    assert rnd["largest_group"] == gna["largest_group"]
    assert rnd["singletons"] == gna["singletons"]
    assert rnd["intra_corr"] < gna["intra_corr"]


def test_support_plus_pool_uses_unlabeled_images_and_needs_them():
    m = method(Grouped, groups=0.5, features="support+pool", pool_size=10)
    res = m.run(episode(unlabeled=tiny_images(30, seed=5)))
    assert res.extra["n_feature_images"] == 6 + 10
    with pytest.raises(DataError, match="unlabeled"):
        m.run(episode())


def test_searched_counts_are_taken_from_the_artifacts():
    res = method(GroupedRL, search="random").run(episode(search_counts={"conv2": 4, "fc1": 20}))
    assert res.extra["counts"] == {"conv2": 4, "fc1": 20}
    assert res.extra["search"] == "random"
    with pytest.raises(ConfigError, match=r"methods\.m\.search"):
        GroupedRL.parse_options({"search": "evolution"}, "methods.m")
    with pytest.raises(DataError, match="search_counts"):
        method(GroupedRL).run(episode())
    with pytest.raises(ConfigError, match=r"search_counts\.fc1"):
        method(GroupedRL).run(episode(search_counts={"fc1": 500}))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"algorithm": "kmean"}, "algorithm"),
        ({"features": "pool"}, "features"),
        ({"groups": 0}, "groups"),
        ({"groups": 1.5}, "groups"),
        ({"groups": {"fc1": -2}}, r"groups\.fc1"),
        ({"grups": 3}, "grups"),
    ],
)
def test_bad_options_are_rejected_when_parsed(options, field):
    with pytest.raises(ConfigError, match=rf"methods\.m\.?{field}|'{field}'"):
        Grouped.parse_options(options, "methods.m")


def test_counts_beyond_a_layer_and_unknown_layers_are_config_errors():
    with pytest.raises(ConfigError, match="conv1"):
        method(Grouped, groups=10).run(episode())  # conv1 has 5 filters
    with pytest.raises(ConfigError, match="fc1"):
        method(Grouped, groups=2, layers=["fc_1"]).run(episode())


def test_layer_selectors_expand_to_every_layer_of_that_type():
    from kshot.grouping import select_layers
    from kshot.models import LeNet, WideCNN

    assert select_layers(LeNet(1, 28, 3), ["conv"]) == ["conv1", "conv2"]
    assert select_layers(WideCNN(1, 28, 3, width=0.25), ["fc"]) == ["fc1"]
    assert select_layers(WideCNN(1, 28, 3, width=0.25), ["fc", "conv"]) == ["fc1", "conv1", "conv2", "conv3"]
    assert select_layers(LeNet(1, 28, 3), None) == ["conv1", "conv2", "fc1"]


@pytest.mark.parametrize("cls", [Grouped, GroupedRandom])
def test_group_stage_file_gives_the_same_run_as_grouping_in_process(cls, tmp_path):
    """The pipeline's path (activation file -> group file -> fine-tuning) and the library's
    (method.run computing its own grouping) are the same computation."""
    from kshot.activations import feature_images, layer_activations
    from kshot.files.groups import groups_made_from, read_groups, save_groups

    m = method(cls, groups=0.5)
    ep = episode()
    images = feature_images(ep.support[0], None, "support", 1, ep.seed)
    acts = layer_activations(ep.model, images, ["conv1", "conv2", "fc1"], CPU)
    raw = {"id": 3, "support": [1, 2, 3], "val": [4]}
    made = groups_made_from(m.kind, m.options, "g", "sha")
    tag = m.options.activation_spec.tag
    grouped = [(raw, *m.grouping(ep.model, ep, acts))]
    summary = save_groups(tmp_path / "g.pt", tmp_path / "g.json", made, "b", 1, tag, grouped)
    given = read_groups(tmp_path / "g.pt", made, [raw])
    staged = m.run(episode(groups=given[3]))
    direct = m.run(episode())
    assert staged.metrics() == direct.metrics()
    assert summary["episodes"]["3"] == direct.extra
    assert set(summary["mean_quality"]) == {"conv1", "conv2", "fc1"}
    with pytest.raises(DataError, match=r"group file '.*g.pt': expected a file made from method 'h'"):
        read_groups(tmp_path / "g.pt", {**made, "method": "h"}, [raw])
    other_method = method(cls, groups=0.25)
    other = groups_made_from(other_method.kind, other_method.options, "g", "sha")
    with pytest.raises(DataError, match=r"expected a file made from options .*rerun the group stage"):
        read_groups(tmp_path / "g.pt", other, [raw])
    with pytest.raises(DataError, match=r"expected an entry for episode 4 \(episodes\) of the episodes file"):
        read_groups(tmp_path / "g.pt", made, [{"id": 4, "support": [1]}])


def test_given_groups_are_the_ones_used():
    """A hand-made grouping handed in is what the run shares gradients over and reports."""
    m = method(Grouped, groups=0.5)
    given = {"assign": {"fc1": torch.zeros(125, dtype=torch.long)}, "extra": {"marker": 1}}
    res = m.run(episode(groups=given))
    assert res.extra == {"marker": 1}
    one_group = method(Grouped, groups={"fc1": 1}).run(episode())
    assert res.loss_curve == one_group.loss_curve  # fc1 as one group, the other layers ungrouped


def test_a_group_file_for_another_network_is_refused():
    m = method(Grouped, groups=0.5)
    bad = {"assign": {"fc1": torch.zeros(7, dtype=torch.long)}, "extra": {}}
    with pytest.raises(DataError, match=r"groups of layer 'fc1': expected an int64 tensor \[125\]"):
        m.run(episode(groups=bad))
    with pytest.raises(
        DataError, match=r"groups of layer 'fc1': expected an int64 tensor \[125\], found a list"
    ):
        m.run(episode(groups={"assign": {"fc1": [0] * 125}, "extra": {}}))
