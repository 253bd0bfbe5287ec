"""The backbones' forward passes."""

import pytest
import torch
from torch import nn

from kshot import models
from kshot.models import Backbone, LeNet, SubsampledPointwiseConv2d, WideCNN, build_backbone


def _textbook_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.features`` in the textbook order, rectify then pool, as the models once ran it."""
    x = model.pool(torch.relu(model.conv1(model.normalise(x))))
    x = model.pool(torch.relu(model.conv2(x)))
    if isinstance(model, LeNet):
        return torch.relu(model.fc1(x.flatten(1)))
    return torch.relu(model.fc1(torch.relu(model.conv3(x)).mean(dim=(2, 3))))


@pytest.mark.parametrize("channels_last", [False, True])  # fine-tuning runs channels_last
@pytest.mark.parametrize("cls", [LeNet, WideCNN])
def test_pooling_before_relu_gives_the_same_features_and_gradients_bit_for_bit(cls, channels_last):
    torch.manual_seed(0)
    model = cls(1, 28, 5)
    # flat image regions make pooling windows whose values tie, at a positive value (the
    # channels with a positive bias) and below zero (the others): the cases where the order could
    # matter
    x = torch.rand(6, 1, 28, 28)
    x[:, :, :10] = 0.0
    x[:3, :, 20:] = 1.0
    with torch.no_grad():
        model.conv1.bias[: model.conv1.out_channels // 2] = 0.3
        model.conv1.bias[model.conv1.out_channels // 2 :] = -0.3
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run(features):
        model.zero_grad()
        out = features(x)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        return [out.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ours, textbook = run(model.features), run(lambda inp: _textbook_features(model, inp))
    assert len(ours) == len(textbook) > 4
    for a, b in zip(ours, textbook, strict=True):
        assert torch.equal(a, b)


class _Shortcuts(Backbone):
    """A user's backbone with 1x1 shortcut-like convolutions, one of the shape torch gets wrong."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, width: float = 1.0):
        super().__init__(in_channels)
        self.down = nn.Conv2d(in_channels, 16, 1, stride=2)  # few channels, stride 2: the bug's shape
        self.same = nn.Conv2d(in_channels, 16, 1)  # stride 1: torch's own is right
        self.wide = nn.Conv2d(8, 16, 1, stride=2)  # 8 channels: torch's own is right
        self.head = nn.Linear(16, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.normalise(x)).mean(dim=(2, 3))


def test_a_registered_backbones_strided_1x1_convolutions_on_few_channels_get_exact_gradients(monkeypatch):
    monkeypatch.setitem(models.BACKBONES, "shortcuts", _Shortcuts)
    model = build_backbone("shortcuts", 3, 8, 5).to(memory_format=torch.channels_last)
    assert type(model.down) is SubsampledPointwiseConv2d
    assert type(model.same) is nn.Conv2d and type(model.wide) is nn.Conv2d
    reference = nn.Conv2d(3, 16, 1, stride=2).double()  # torch's float64 convolution: right
    reference.load_state_dict(model.down.state_dict())
    torch.manual_seed(0)
    for _ in range(5):  # torch's float32 backward on channels-last was wrong in 12 of 12 such steps
        model.zero_grad()
        reference.zero_grad()
        x = torch.randn(32, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        xf, xr = x.clone().requires_grad_(), x.double().requires_grad_()
        out, expected = model.down(xf), reference(xr)
        torch.testing.assert_close(out, expected.float())
        weights = torch.randn(out.shape)
        (out * weights).sum().backward()
        (expected * weights.double()).sum().backward()
        # float32 sums of 32 x 16 terms round at about 1e-5; the wrong gradients were off by 1 or more
        tol = {"rtol": 1e-5, "atol": 1e-4}
        torch.testing.assert_close(xf.grad, xr.grad.float(), **tol)
        torch.testing.assert_close(model.down.weight.grad, reference.weight.grad.float(), **tol)
        torch.testing.assert_close(model.down.bias.grad, reference.bias.grad.float(), **tol)
