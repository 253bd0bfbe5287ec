"""The backbones' forward passes."""

import pytest
import torch
from torch import nn

from kshot.models import LeNet, WideCNN


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
