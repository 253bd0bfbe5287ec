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


# --- the activation stage's file --------------------------------------------------------------


def test_activation_tags_name_the_spec_and_round_trip():
    from kshot.activations import ActivationSpec

    for spec, tag in [
        (ActivationSpec(), "support"),
        (ActivationSpec("support+pool", 40), "support+pool40"),
        (ActivationSpec("support", rectify=False), "support-raw"),
        (ActivationSpec("support+pool", 7, False), "support+pool7-raw"),
    ]:
        assert spec.tag == tag
        assert ActivationSpec.from_tag(tag).tag == tag
    with pytest.raises(ConfigError, match=r"activations tag: expected 'support' or 'support\+pool<N>'"):
        ActivationSpec.from_tag("pool")


def _episodes_file():
    """An episodes file over a pool of 30 tiny images: 2 evaluation and 1 search episode."""
    eps = {
        "eval": [{"id": 0, "support": [0, 1, 2]}, {"id": 1, "support": [3, 4, 5]}],
        "search": [{"id": 0, "support": [6, 7, 8]}],
    }
    return {"k": 1, "n_classes": 3, **eps}


def test_activation_file_holds_every_role_and_is_checked_on_reading(tmp_path):
    from kshot.activations import (
        ActivationSpec,
        episode_activations,
        feature_images,
        read_activations,
        save_activations,
    )
    from kshot.episodes import role_seed
    from kshot.errors import DataError

    model, pool, ep_file = tiny_lenet(), tiny_images(30), _episodes_file()
    spec = ActivationSpec("support+pool", 10)
    content = episode_activations(model, ep_file, pool, spec, model.groupable(), CPU, 0, "b", "abc")
    path = tmp_path / "acts.pt"
    save_activations(path, content)
    got = read_activations(path, spec, "eval", ep_file["eval"], "abc")
    # the same patterns the in-process path computes from the same images and seed
    images = feature_images(pool[[3, 4, 5]], pool, "support+pool", 10, role_seed(0, "b", "eval", 1, 1))
    want = layer_activations(model, images, ["fc1"], CPU)
    assert torch.equal(got[1]["fc1"], want["fc1"]) and got[1]["fc1"].shape == (125, 13)
    assert set(got[0]) == {"conv1", "conv2", "fc1"}
    assert read_activations(path, spec, "search", ep_file["search"], "abc")[0]["conv1"].shape == (5, 13)
    with pytest.raises(DataError, match=r"activation file '.*acts.pt': expected activations 'support'"):
        read_activations(path, ActivationSpec(), "eval", ep_file["eval"], "abc")
    with pytest.raises(DataError, match=r"expected activations of checkpoint sha256 other"):
        read_activations(path, spec, "eval", ep_file["eval"], "other")
    moved = [{"id": 1, "support": [3, 4, 9]}]
    with pytest.raises(DataError, match=r"episode 1 of the episodes file, found other support images"):
        read_activations(path, spec, "eval", moved, "abc")
    with pytest.raises(DataError, match=r"select episode 0 of the episodes file, found no entry"):
        read_activations(path, spec, "select", [{"id": 0, "support": [0]}], "abc")
