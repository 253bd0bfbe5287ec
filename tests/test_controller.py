import math

import pytest
import torch

from kshot.config import ControllerConfig, from_dict
from kshot.controller import GroupCountPolicy, Reinforce
from kshot.errors import ConfigError


def test_sampling_is_reproducible_from_the_seed():
    first = [Reinforce([5, 3, 4], ControllerConfig(), seed=3).sample().actions for _ in range(2)]
    assert first[0] == first[1]
    ctl = Reinforce([5, 3, 4], ControllerConfig(), seed=3)
    draws = [tuple(ctl.sample().actions) for _ in range(20)]
    assert len(set(draws)) > 1
    assert all(0 <= x < n for d in draws for x, n in zip(d, [5, 3, 4], strict=True))


def test_log_prob_and_entropy_are_sums_over_layers():
    torch.manual_seed(0)
    policy = GroupCountPolicy([4, 2, 3])
    s = policy.sample(torch.Generator().manual_seed(1))
    again = policy.evaluate(s.actions)
    torch.testing.assert_close(s.log_prob, again.log_prob)
    # an untrained policy is near uniform: entropy close to the sum of log menu sizes
    assert 0 < float(s.entropy.detach()) <= math.log(4) + math.log(2) + math.log(3) + 1e-6
    assert float(s.entropy.detach()) > 0.9 * (math.log(4) + math.log(2) + math.log(3))
    assert float(s.log_prob.detach()) < 0


def test_first_update_has_zero_advantage_and_sets_the_baseline():
    ctl = Reinforce([3, 3], ControllerConfig(baseline_decay=0.5, entropy_weight=0.0), seed=0)
    first = ctl.update(ctl.sample(), 0.6)
    assert first["advantage"] == 0.0 and ctl.baseline == pytest.approx(0.6)
    second = ctl.update(ctl.sample(), 0.8)
    assert second["advantage"] == pytest.approx(0.2)
    assert ctl.baseline == pytest.approx(0.7)


def test_reinforce_learns_the_rewarded_configuration_of_a_bandit():
    best = [2, 0, 3]
    ctl = Reinforce([4, 4, 4], ControllerConfig(lr=0.1, entropy_weight=0.0), seed=0)
    start = float(ctl.policy.evaluate(best).log_prob.detach().exp())
    for _ in range(150):
        s = ctl.sample()
        ctl.update(s, sum(a == b for a, b in zip(s.actions, best, strict=True)) / 3)
    assert ctl.policy.greedy() == best
    assert float(ctl.policy.evaluate(best).log_prob.detach().exp()) > 10 * start


def test_controller_config_is_validated_by_name():
    with pytest.raises(ConfigError, match=r"search\.controller\.baseline_decay"):
        from_dict(ControllerConfig, {"baseline_decay": 1.0}, "search.controller")
    with pytest.raises(ConfigError, match="menu"):
        GroupCountPolicy([3, 0])
