"""kshot.optim.SGD against torch.optim.SGD."""

import pytest
import torch
import torch.nn.functional as F

from kshot.models import LeNet
from kshot.optim import SGD


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
