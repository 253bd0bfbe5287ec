import pytest
import torch

from kshot.config import EpisodeConfig
from kshot.episodes import make_episodes
from kshot.errors import DataError

POOL = torch.arange(5).repeat_interleave(30)
TEST = torch.arange(5).repeat_interleave(10)


def test_episodes_have_k_per_class_and_disjoint_support_and_validation():
    eps = make_episodes(POOL, TEST, 3, EpisodeConfig(n_episodes=4, val_per_class=5), 0, "b")
    assert len(eps["eval"]) == 4
    for ep in eps["eval"]:
        assert torch.bincount(POOL[ep["support"]], minlength=5).tolist() == [3] * 5
        assert torch.bincount(POOL[ep["val"]], minlength=5).tolist() == [5] * 5
        assert not set(ep["support"]) & set(ep["val"])
        assert ep["test"] is None


def test_episodes_are_deterministic_and_differ_across_seeds_and_roles():
    cfg = EpisodeConfig(n_episodes=2, search_episodes=2, select_episodes=3)
    a = make_episodes(POOL, TEST, 1, cfg, 0, "b")
    assert a == make_episodes(POOL, TEST, 1, cfg, 0, "b")
    assert a["eval"] != make_episodes(POOL, TEST, 1, cfg, 1, "b")["eval"]
    assert a["eval"][0]["support"] != a["search"][0]["support"]
    assert len(a["select"]) == 3 and a["select"][0]["support"] != a["search"][0]["support"]
    # adding selection episodes leaves the evaluation and search episodes as they were
    b = make_episodes(POOL, TEST, 1, EpisodeConfig(n_episodes=2, search_episodes=2), 0, "b")
    assert (b["eval"], b["search"], b["select"]) == (a["eval"], a["search"], [])


def test_test_per_class_subsamples_the_test_split():
    eps = make_episodes(POOL, TEST, 1, EpisodeConfig(test_per_class=4, n_episodes=1), 0, "b")
    assert torch.bincount(TEST[eps["eval"][0]["test"]]).tolist() == [4] * 5


def test_k_larger_than_a_class_allows_names_the_fields_and_counts():
    with pytest.raises(
        DataError, match=r"episodes.k: k=25 plus episodes.val_per_class=10 needs 35.*has only 30"
    ):
        make_episodes(POOL, TEST, 25, EpisodeConfig(val_per_class=10), 0, "b")
