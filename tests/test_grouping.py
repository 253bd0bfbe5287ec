import pytest
import torch

from kshot.errors import ConfigError, DataError
from kshot.grouping import (
    canonical,
    check_assignment,
    cluster_quality,
    group_layers,
    group_neurons,
    normalise_patterns,
    random_grouping,
    resolve_count,
)


def planted(n_per: int = 4, n_protos: int = 3, m: int = 20, noise: float = 0.01, seed: int = 0):
    """Neurons that are scaled, shifted, noisy copies of ``n_protos`` prototype patterns,
    interleaved so the true partition is ``i % n_protos``. Returns ``(acts [N, m], truth [N])``."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(n_protos, m, generator=gen)
    truth = torch.arange(n_protos * n_per) % n_protos
    scale = torch.rand(len(truth), 1, generator=gen) * 5 + 0.5
    shift = torch.randn(len(truth), 1, generator=gen) * 3
    acts = protos[truth] * scale + shift + noise * torch.randn(len(truth), m, generator=gen)
    return acts, canonical(truth)


@pytest.mark.parametrize("algorithm", ["kmeans", "agglomerative"])
def test_planted_groups_of_correlated_neurons_are_recovered(algorithm):
    acts, truth = planted()
    assert torch.equal(group_neurons(acts, 3, algorithm, seed=0), truth)


def test_normalised_patterns_dot_product_is_pearson_correlation():
    acts, _ = planted(m=30)
    z = normalise_patterns(acts)
    expected = torch.corrcoef(acts.double()).float()
    torch.testing.assert_close(z @ z.T, expected, atol=1e-5, rtol=1e-5)


def test_constant_neurons_become_zero_patterns():
    acts = torch.tensor([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]])
    z = normalise_patterns(acts)
    assert torch.equal(z[0], torch.zeros(3))
    assert z[1].norm() == pytest.approx(1.0)


def test_exactly_the_requested_count_even_with_duplicate_patterns():
    acts = torch.ones(10, 1) * torch.tensor([[1.0, 2.0, 3.0]])  # all neurons identical
    assign = group_neurons(acts, 4, "kmeans", seed=0)
    assert check_assignment(assign, 10, "assign") == 4
    assert torch.equal(torch.unique(assign), torch.arange(4))


def test_one_group_per_neuron_and_one_group_are_trivial():
    acts, _ = planted()
    assert torch.equal(group_neurons(acts, 12), torch.arange(12))
    assert torch.equal(group_neurons(acts, 1), torch.zeros(12, dtype=torch.long))


def test_kmeans_grouping_is_deterministic_given_the_seed():
    acts = torch.randn(40, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(group_neurons(acts, 7, seed=5), group_neurons(acts, 7, seed=5))


def test_groups_are_canonically_labelled_by_first_neuron():
    assert torch.equal(canonical(torch.tensor([7, 7, 2, 9, 2])), torch.tensor([0, 0, 1, 2, 1]))


def test_resolve_count_reads_ints_as_counts_and_floats_as_fractions():
    assert resolve_count(3, 20, "g") == 3
    assert resolve_count(0.25, 20, "g") == 5
    assert resolve_count(1.0, 20, "g") == 20
    assert resolve_count(0.001, 20, "g") == 1


@pytest.mark.parametrize("spec", [0, 21, 0.0, 1.5, -0.2, True, "4"])
def test_resolve_count_rejects_out_of_range_values_naming_the_field(spec):
    with pytest.raises(ConfigError, match=r"methods\.g\.groups"):
        resolve_count(spec, 20, "methods.g.groups")


def test_unknown_algorithm_is_a_config_error():
    with pytest.raises(ConfigError, match="algorithm"):
        group_neurons(torch.randn(5, 3), 2, "spectral")


def test_cluster_quality_separates_planted_groups_from_random_ones():
    acts, truth = planted(n_per=6, noise=0.05)
    good = cluster_quality(acts, truth)
    shuffled = cluster_quality(acts, random_grouping(truth, seed=1))
    assert good["n_groups"] == 3 and good["largest_group"] == 6
    assert good["intra_corr"] > 0.95 > good["inter_corr"]
    assert good["silhouette"] > 0.8
    assert shuffled["intra_corr"] < good["intra_corr"] - 0.3


def test_cluster_quality_is_undefined_where_silhouette_is():
    acts, _ = planted()
    q = cluster_quality(acts, torch.arange(12))
    assert q["silhouette"] is None and q["intra_corr"] is None and q["singletons"] == 12


def test_random_grouping_keeps_every_group_size_but_not_membership():
    _, truth = planted(n_per=5, n_protos=4)
    uneven = canonical(torch.tensor([0] * 10 + [1] * 6 + [2] * 3 + [3]))
    for assign in (truth, uneven):
        shuffled = random_grouping(assign, seed=0)
        assert torch.equal(torch.bincount(shuffled), torch.bincount(assign))
        assert not torch.equal(shuffled, assign)
        assert torch.equal(shuffled, random_grouping(assign, seed=0))


def test_malformed_assignment_is_a_data_error():
    with pytest.raises(DataError, match="none empty"):
        check_assignment(torch.tensor([0, 2, 2]), 3, "assign")
    with pytest.raises(DataError, match=r"\[4\]"):
        check_assignment(torch.tensor([0, 1, 1]), 4, "assign")


def test_group_layers_groups_each_layer_with_its_count():
    acts = {"a": planted()[0], "b": torch.randn(9, 5)}
    out = group_layers(acts, {"a": 3, "b": 2})
    assert int(out["a"].max()) == 2 and int(out["b"].max()) == 1
    with pytest.raises(ConfigError, match="'c'"):
        group_layers(acts, {"c": 2})
