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
    from kshot.config import ActivationSpec

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
        "eval": [{"id": 0, "support": [0, 1, 2], "val": [9]}, {"id": 1, "support": [3, 4, 5], "val": [10]}],
        "search": [{"id": 0, "support": [6, 7, 8], "val": [11]}],
    }
    return {"benchmark": "b", "k": 1, "n_classes": 3, **eps}


SIZES = {"conv1": 5, "conv2": 12, "fc1": 125}


def test_activation_file_holds_every_role_and_is_checked_on_reading(tmp_path):
    from kshot.activations import episode_patterns, feature_images
    from kshot.config import ActivationSpec
    from kshot.episodes import role_seed
    from kshot.errors import DataError
    from kshot.files.activations import made_from, read_activations, save_activations

    model, pool, ep_file = tiny_lenet(), tiny_images(30), _episodes_file()
    spec = ActivationSpec("support+pool", 10)
    prov = made_from("ckpt", "target", 0, "b", 1, spec.tag)
    patterns = episode_patterns(model, ep_file, pool, spec, model.groupable(), CPU, seed=0)
    path = tmp_path / "acts.pt"
    save_activations(path, prov, model.groupable(), patterns)
    got = read_activations(path, prov, "eval", ep_file["eval"], SIZES)
    # the same patterns the in-process path computes from the same images and seed
    seed = role_seed(0, "b", "eval", 1, 1)
    images = feature_images(pool[[3, 4, 5]], pool, "support+pool", 10, seed, [3, 4, 5, 10])
    want = layer_activations(model, images, ["fc1"], CPU)
    assert torch.equal(got[1]["fc1"], want["fc1"]) and got[1]["fc1"].shape == (125, 13)
    assert set(got[0]) == {"conv1", "conv2", "fc1"}
    assert read_activations(path, prov, "search", ep_file["search"], SIZES)[0]["conv1"].shape == (5, 13)
    with pytest.raises(
        DataError, match=r"activation file '.*acts.pt': expected a file made from tag 'support'"
    ):
        read_activations(path, {**prov, "tag": "support"}, "eval", ep_file["eval"], SIZES)
    with pytest.raises(DataError, match=r"made from checkpoint 'other' \(found 'ckpt'\); seed 1 \(found 0\)"):
        read_activations(path, {**prov, "checkpoint": "other", "seed": 1}, "eval", ep_file["eval"], SIZES)
    moved = [{"id": 1, "support": [3, 4, 5], "val": [12]}]
    with pytest.raises(DataError, match=r"episode 1 \(eval\) of the episodes file, found an entry for other"):
        read_activations(path, prov, "eval", moved, SIZES)
    with pytest.raises(DataError, match=r"episode 0 \(select\) of the episodes file, found no entry"):
        read_activations(path, prov, "select", [{"id": 0, "support": [0]}], SIZES)
    with pytest.raises(
        DataError, match=r"expected a \[64, images\] matrix for layer 'fc1' of eval episode 0"
    ):
        read_activations(path, prov, "eval", ep_file["eval"], {**SIZES, "fc1": 64})


def test_support_plus_pool_never_draws_the_episodes_own_support_or_validation_images():
    from kshot.activations import feature_images

    pool = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)
    exclude = [0, 1, 2, 5, 7]
    images = feature_images(pool[[0, 1, 2]], pool, "support+pool", 100, seed=3, exclude=exclude)
    drawn = images[3:].flatten().tolist()
    assert len(drawn) == 15 and not set(drawn) & set(exclude)
    assert len(feature_images(pool[[0]], pool, "support+pool", 100, seed=3)) == 21  # nothing excluded


def test_a_malformed_activation_file_is_a_named_error_not_a_traceback(tmp_path):
    from kshot.errors import DataError
    from kshot.files.activations import FORMAT, made_from, read_activations
    from kshot.io import save_tensors

    prov = made_from("ckpt", "target", 0, "b", 1, "support")
    save_tensors(tmp_path / "a.pt", {"format": FORMAT, "made_from": prov, "roles": {"eval": {"0": 3}}})
    with pytest.raises(DataError, match=r"activation file '.*a.pt': expected an entry for episode 0"):
        read_activations(tmp_path / "a.pt", prov, "eval", _episodes_file()["eval"], SIZES)
    save_tensors(tmp_path / "b.pt", {"format": FORMAT, "made_from": 7})
    with pytest.raises(DataError, match=r"expected a 'made_from' record of its inputs, found 7"):
        read_activations(tmp_path / "b.pt", prov, "eval", [], SIZES)
