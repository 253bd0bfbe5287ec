import pytest
import torch
from tiny_nets import tiny_images, tiny_lenet

from kshot.activations import layer_activations
from kshot.errors import ConfigError
from kshot.finetune import to_input

CPU = torch.device("cpu")


def test_activation_matrices_are_neurons_by_images():
    model, images = tiny_lenet(), tiny_images(7)
    acts = layer_activations(model, images, model.groupable(), CPU)
    assert list(acts) == ["conv1", "conv2", "fc1"]
    assert acts["conv1"].shape == (5, 7)
    assert acts["conv2"].shape == (12, 7)
    assert acts["fc1"].shape == (125, 7)


def test_conv_feature_is_spatial_mean_of_rectified_map():
    model, images = tiny_lenet(), tiny_images(4)
    acts = layer_activations(model, images, ["conv1"], CPU)
    with torch.no_grad():
        maps = model.conv1(model.normalise(to_input(images, CPU)))  # [4, 5, 12, 12]
    torch.testing.assert_close(acts["conv1"], torch.relu(maps).mean(dim=(2, 3)).T)


def test_unrectified_feature_keeps_negative_preactivations():
    model, images = tiny_lenet(), tiny_images(6)
    acts = layer_activations(model, images, ["fc1"], CPU, rectify=False)
    with torch.no_grad():
        x = model.pool(torch.relu(model.conv1(model.normalise(to_input(images, CPU)))))
        fc_in = model.pool(torch.relu(model.conv2(x))).flatten(1)
    torch.testing.assert_close(acts["fc1"], model.fc1(fc_in).T)
    assert (acts["fc1"] < 0).any()


def test_streaming_in_small_batches_gives_the_same_matrix():
    model, images = tiny_lenet(), tiny_images(10)
    whole = layer_activations(model, images, ["conv2", "fc1"], CPU, batch_size=256)
    streamed = layer_activations(model, images, ["conv2", "fc1"], CPU, batch_size=3)
    for name in whole:
        torch.testing.assert_close(whole[name], streamed[name])


def test_training_mode_is_restored_and_hooks_removed():
    model, images = tiny_lenet(), tiny_images(3)
    model.train()
    layer_activations(model, images, ["conv1"], CPU)
    assert model.training
    assert not model.conv1._forward_hooks


def test_unknown_layer_is_a_config_error_with_suggestion():
    model = tiny_lenet()
    with pytest.raises(ConfigError, match="conv1"):
        layer_activations(model, tiny_images(2), ["conv_1"], CPU)


def test_non_uint8_images_are_rejected():
    model = tiny_lenet()
    with pytest.raises(ConfigError, match="uint8"):
        layer_activations(model, torch.zeros(2, 1, 16, 16), ["conv1"], CPU)
