"""ResNet-18 at kshot's scale: torchvision's architecture, weights from a local file, and grouping
of its conv layers with BatchNorm following the conv's groups."""

import copy

import pytest
import torch
import torchvision

from kshot.config import SourceConfig
from kshot.errors import CheckpointError, ConfigError
from kshot.files.checkpoint import read_weights
from kshot.models import LeNet, ResNet18, ResNet18Cifar, build_backbone
from kshot.params import params_from_dict
from kshot.pretrain import pretrain
from tests.conftest import TINY_PARAMS, make_images

CPU = torch.device("cpu")


def torchvision_weights(tmp_path, seed=3, wrap=False):
    """A torchvision ResNet-18 state dict (random, seeded) saved as a weights file."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-local.pth"
    torch.save({"state_dict": state} if wrap else state, path)
    return path, state


def source_split(channels=1, side=32, n=6):
    x, y = make_images(n, 3, side)
    x = x.repeat(1, channels, 1, 1)
    return x, y, x[::2], y[::2]


def test_resnet18_is_torchvisions_architecture_and_the_cifar_variant_only_changes_the_stem():
    ours = build_backbone("resnet18", 3, 32, 10).body.state_dict()
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {
        k: v.shape for k, v in theirs.items() if not k.startswith("fc.")
    }
    cifar = build_backbone("resnet18_cifar", 3, 32, 10)
    assert cifar.body.conv1.kernel_size == (3, 3) and isinstance(cifar.body.maxpool, torch.nn.Identity)
    assert cifar.features(torch.rand(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("wrap", [False, True])
def test_a_local_weights_file_is_loaded_key_for_key_and_only_the_head_trains_at_zero_epochs(tmp_path, wrap):
    path, state = torchvision_weights(tmp_path, wrap=wrap)
    src = SourceConfig(dataset="x", classes=[0, 1, 2], backbone="resnet18", pretrained=str(path), epochs=0)
    src.validate("sources.local")
    model, metrics = pretrain(src, *source_split(channels=3), 0, CPU, read_weights(path))
    body = model.body.state_dict()
    assert all(torch.equal(body[k], state[k]) for k in body), "the body must hold the file's weights"
    assert 0.0 <= metrics["source_test_acc"] <= 1.0 and len(metrics["epochs"]) == 1


def test_a_three_channel_stem_loads_into_a_grayscale_network_as_its_luminance_sum(tmp_path):
    path, state = torchvision_weights(tmp_path)
    model = ResNet18(in_channels=1, image_size=32, n_classes=3)
    model.load_torchvision(*read_weights(path))
    assert torch.allclose(model.body.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_the_cifar_variant_loads_every_tensor_but_its_own_stem(tmp_path):
    path, state = torchvision_weights(tmp_path)
    torch.manual_seed(0)
    model = ResNet18Cifar(in_channels=3, image_size=32, n_classes=3)
    stem = model.body.conv1.weight.clone()
    model.load_torchvision(*read_weights(path))
    assert torch.equal(model.body.conv1.weight, stem)
    assert torch.equal(model.body.layer2[0].downsample[0].weight, state["layer2.0.downsample.0.weight"])


def test_a_weights_file_of_another_architecture_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "lenet.pth"
    torch.save(LeNet(1, 28, 5).state_dict(), path)
    model = ResNet18(in_channels=1, image_size=32, n_classes=3)
    with pytest.raises(
        CheckpointError, match=r"weights file '.*lenet.pth': expected a torchvision resnet18"
    ) as err:
        model.load_torchvision(*read_weights(path))
    assert "\n" not in str(err.value) and "missing" in str(err.value) and "unexpected" in str(err.value)


def test_a_weights_file_that_is_no_state_dict_or_is_missing_is_an_error_naming_the_file(tmp_path):
    for name, content in (("list.pth", [torch.zeros(2)]), ("numbers.pth", {"lr": 0.1})):
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"weights file '.*{name}': expected a (state )?dict"):
            read_weights(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"weights file '.*absent.pth': expected an existing file"):
        read_weights(tmp_path / "absent.pth")


def test_pretrained_weights_on_a_backbone_that_cannot_load_them_and_zero_epochs_without_are_errors():
    raw = copy.deepcopy(TINY_PARAMS)
    source = next(iter(raw["sources"]))
    bad = copy.deepcopy(raw)
    bad["sources"][source].update(backbone="lenet", pretrained="w.pth")
    with pytest.raises(
        ConfigError, match=rf"sources.{source}.pretrained: expected null for backbone 'lenet'"
    ):
        params_from_dict(bad)
    bad = copy.deepcopy(raw)
    bad["sources"][source]["epochs"] = 0
    with pytest.raises(ConfigError, match=rf"sources.{source}.epochs: expected a number > 0, found 0"):
        params_from_dict(bad)
    ok = copy.deepcopy(raw)
    ok["sources"][source].update(backbone="resnet18", pretrained="w.pth", epochs=0)
    assert params_from_dict(ok).sources[source].weights_file() == "w.pth"
