"""kshot.optim.SGD and Adam against torch.optim's."""

import pytest
import torch
import torch.nn.functional as F

from kshot.controller import GroupCountPolicy
from kshot.models import LeNet
from kshot.optim import SGD, Adam


def _train(make_opt, steps=6):
    torch.manual_seed(0)
    model = LeNet(1, 28, 5)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 5
    opt = make_opt(list(model.parameters()))
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 0.0), (0.9, 5e-4), (0.0, 0.0), (0.0, 1e-3)])
def test_the_same_parameters_as_torch_sgd_bit_for_bit(momentum, weight_decay):
    kw = {"lr": 0.05, "momentum": momentum, "weight_decay": weight_decay}
    ours = _train(lambda ps: SGD(ps, **kw))
    theirs = _train(lambda ps: torch.optim.SGD(ps, **kw))
    assert len(ours) == len(theirs) == 8
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # and training moved them: the comparison is not between two untouched models
    assert not torch.equal(ours[0], _train(lambda ps: SGD(ps, **kw), steps=0)[0])


def test_a_parameter_without_a_gradient_is_an_error():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = SGD([a, b], lr=0.1, momentum=0.9)
    (a * 2).sum().backward()
    with pytest.raises(RuntimeError, match=r"parameters \[1\] have no gradient"):
        opt.step()
    assert torch.equal(a, torch.zeros(2))  # nothing half-applied


@pytest.mark.parametrize("lr", [0.05, 1e-3])
def test_adam_gives_the_same_controller_parameters_as_torch_adam_bit_for_bit(lr):
    """The search controller's updates: REINFORCE losses on sampled actions, with one parameter
    (the last layer's embedding) that never gets a gradient."""

    def train(make_opt, steps=8):
        torch.manual_seed(0)
        policy = GroupCountPolicy([5, 4, 3], hidden=8, embed=4)
        opt = make_opt(list(policy.parameters()))
        gen = torch.Generator().manual_seed(1)
        for i in range(steps):
            sample = policy.sample(gen)
            opt.zero_grad()
            (-(0.3 - 0.1 * i) * sample.log_prob - 0.01 * sample.entropy).backward()
            opt.step()
        return [p.detach().clone() for p in policy.parameters()], policy.embeds[-1].weight.grad

    ours, unused = train(lambda ps: Adam(ps, lr=lr))
    theirs, _ = train(lambda ps: torch.optim.Adam(ps, lr=lr))
    assert unused is None
    assert len(ours) == len(theirs) > 5
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    before, _ = train(lambda ps: Adam(ps, lr=lr), steps=0)
    assert not torch.equal(ours[0], before[0])
