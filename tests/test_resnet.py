"""ResNet-18 at kshot's scale: torchvision's architecture, weights from a local file, and grouping
of its conv layers with BatchNorm following the conv's groups."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from kshot import models
from kshot.config import FinetuneConfig, SearchConfig, SourceConfig, from_dict
from kshot.errors import CheckpointError, ConfigError
from kshot.files.checkpoint import read_weights
from kshot.files.search import read_chosen_counts, save_trace
from kshot.finetune import to_input, train
from kshot.grouping import layer_sizes
from kshot.methods.full import FullFinetune
from kshot.methods.grouped import Grouped
from kshot.models import LeNet, ResNet18, ResNet18Cifar, SmallMapConv2d, build_backbone, pixel_windows
from kshot.params import params_from_dict
from kshot.population import train_population
from kshot.pretrain import pretrain
from kshot.search import SearchEpisode, expand_counts, search_group_counts, tie_layers
from kshot.shared_grad import GroupedGradient, neuron_parameters
from tests.conftest import TINY_PARAMS, make_images
from tests.test_methods import episode
from tests.tiny_nets import tiny_lenet, tiny_task

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


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "bias"),
    [
        ((1, 1), 3, 1, 1, False),  # layer 4's 1x1 maps: the centre tap
        ((1, 1), 3, 2, 1, True),
        ((2, 2), 3, 2, 1, False),  # layer 4's first conv: 2x2 -> 1x1
        ((2, 2), 1, 2, 0, True),  # a 1x1 shortcut with stride 2
        ((3, 3), 3, 1, 0, False),  # no padding: every tap
        ((2, 2), 3, 1, 1, True),  # layer 3's 2x2 maps: four pixels, four tap windows
        ((4, 4), 3, 2, 1, False),  # layer 3's first conv: 4x4 -> 2x2, windows of 2 and 3 taps
        ((4, 4), 1, 2, 0, False),
        ((1, 3), 3, 1, 1, True),  # not square: 1x3 -> 1x3
        ((2, 5), 3, 2, 1, False),  # 2x5 -> 1x3
    ],
)
def test_a_convolution_with_a_small_output_is_the_convolution_as_matrix_products_per_pixel(
    size, kernel, stride, padding, bias
):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=padding, bias=bias)
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    fast.__class__ = SmallMapConv2d
    assert pixel_windows(fast, size, fast.max_pixels) is not None
    plain.double()  # the reference in float64: float32 is wrong for some of these (SubsampledPointwiseConv2d)
    x = torch.randn(4, 6, *size).contiguous(memory_format=torch.channels_last)
    xp, xf = x.double().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_fast = plain(xp), fast(xf)
    assert out_fast.shape == out_plain.shape and out_fast.shape[-2] * out_fast.shape[-1] <= 4
    torch.testing.assert_close(out_fast, out_plain.float())
    weights = torch.randn(out_plain.shape)
    (out_plain * weights.double()).sum().backward()
    (out_fast * weights).sum().backward()
    torch.testing.assert_close(xf.grad, xp.grad.float())
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad.float())
    # the gradient arrives in the weight's own (channels-last) layout: nothing copies it over
    assert fast.weight.grad.stride() == fast.weight.stride()
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad.float())


def test_larger_outputs_and_other_convolutions_keep_torchs_convolution():
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    assert pixel_windows(conv, (4, 4), 4) is None  # 16 pixels: layer 2's maps at 32x32
    assert pixel_windows(conv, (2, 2), 1) is None  # 4 pixels over a bound of 1
    assert pixel_windows(conv, (2, 2), 4) is not None
    assert pixel_windows(torch.nn.Conv2d(6, 6, 3, padding=1, groups=2), (1, 1), 4) is None
    assert pixel_windows(torch.nn.Conv2d(6, 5, 3, padding=1, dilation=2), (1, 1), 4) is None
    assert pixel_windows(torch.nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect"), (1, 1), 4) is None
    assert pixel_windows(torch.nn.Conv2d(6, 5, 3, padding="same"), (1, 1), 4) is None


def test_tensors_off_the_cpu_keep_torchs_convolution(monkeypatch):
    calls = []
    monkeypatch.setattr(models, "pixel_windows", lambda *args: calls.append(args))
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    conv.__class__ = SmallMapConv2d
    conv(torch.rand(2, 6, 1, 1))
    assert len(calls) == 1  # on the CPU the windows are asked for
    conv.to("meta")(torch.rand(2, 6, 1, 1, device="meta"))
    assert len(calls) == 1  # elsewhere (CUDA; "meta" here) not


def test_only_resnet18s_last_two_stages_at_32x32_take_the_matrix_products():
    model = build_backbone("resnet18", 1, 32, 5)
    sizes = {}

    def record(name):
        def hook(module, args):
            sizes[name] = tuple(args[0].shape[-2:])

        return hook

    hooks = [
        m.register_forward_pre_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    model(torch.rand(2, 1, 32, 32))
    for h in hooks:
        h.remove()
    fast = {name for name, m in model.named_modules() if name in sizes and pixel_windows(m, sizes[name], 4)}
    assert fast == {name for name in sizes if name.startswith(("body.layer3.", "body.layer4."))}
    assert all(type(m) is SmallMapConv2d for name, m in model.named_modules() if name in sizes)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, SmallMapConv2d):
            m.__class__ = torch.nn.Conv2d
    x = torch.rand(3, 1, 32, 32)
    model.eval(), plain.eval()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    F.cross_entropy(plain(x), torch.tensor([0, 1, 2])).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


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


def test_pretrained_weights_on_a_backbone_that_cannot_load_them_and_negative_epochs_are_errors():
    raw = copy.deepcopy(TINY_PARAMS)
    source = next(iter(raw["sources"]))
    bad = copy.deepcopy(raw)
    bad["sources"][source].update(backbone="lenet", pretrained="w.pth")
    with pytest.raises(
        ConfigError, match=rf"sources.{source}.pretrained: expected null for backbone 'lenet'"
    ):
        params_from_dict(bad)
    bad = copy.deepcopy(raw)
    bad["sources"][source]["epochs"] = -1
    with pytest.raises(ConfigError, match=rf"sources.{source}.epochs: expected a number >= 0, found -1"):
        params_from_dict(bad)
    random = copy.deepcopy(raw)
    random["sources"][source]["epochs"] = 0  # the random initialisation as it is
    assert params_from_dict(random).sources[source].weights_file() is None
    ok = copy.deepcopy(raw)
    ok["sources"][source].update(backbone="resnet18", pretrained="w.pth", epochs=0)
    assert params_from_dict(ok).sources[source].weights_file() == "w.pth"


# ---------------------------------------------------------------- grouping ResNet-18's conv layers


def tiny_resnet(seed=0):
    """A ResNet-18 for 3-class 16x16 grayscale images with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = ResNet18(in_channels=1, image_size=16, n_classes=3)
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 1, 16, 16))  # running statistics of their own, not 0/1
    return model.eval()


def small(ep):
    for part in ("support", "val", "test"):
        x, y = getattr(ep, part)
        setattr(ep, part, (F.interpolate(x.float(), size=16).to(torch.uint8), y))
    return ep


def test_every_resnet_conv_has_its_batchnorm_and_the_neuron_holds_its_scale_and_shift():
    model = tiny_resnet()
    norms = model.norms()
    assert len(norms) == len(model.groupable()) == 20
    for conv, bn in norms.items():
        assert isinstance(model.get_submodule(bn), torch.nn.BatchNorm2d)
        assert model.get_submodule(bn).num_features == model.get_submodule(conv).out_channels
    assert neuron_parameters(model, "body.layer2.0.downsample.0") == [
        "body.layer2.0.downsample.0.weight",
        "body.layer2.0.downsample.1.weight",
        "body.layer2.0.downsample.1.bias",
    ]
    assert neuron_parameters(model, "body.conv1", share_bias=False) == [
        "body.conv1.weight",
        "body.bn1.weight",
    ]


@pytest.mark.parametrize("share_bias", [True, False])
def test_batchnorm_scale_and_shift_take_their_convs_group_mean_gradient(share_bias):
    model = tiny_resnet()
    x, y = make_images(2, 3, 16)
    model.zero_grad()
    F.cross_entropy(model(to_input(x, CPU)), y).backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    assign = torch.arange(64) % 8
    GroupedGradient(model, {"body.layer1.0.conv2": assign}, share_bias=share_bias)(model)
    bn = model.body.layer1[0].bn2
    for g in range(8):
        members = assign == g
        torch.testing.assert_close(
            bn.weight.grad[members], raw["body.layer1.0.bn2.weight"][members].mean().expand(8)
        )
    if share_bias:
        assert torch.allclose(bn.bias.grad, raw["body.layer1.0.bn2.bias"].view(8, 8).mean(0).repeat(8))
    else:
        assert torch.equal(bn.bias.grad, raw["body.layer1.0.bn2.bias"])
    assert torch.equal(model.body.layer1[0].bn1.weight.grad, raw["body.layer1.0.bn1.weight"])


def test_one_channel_per_group_is_exactly_full_finetuning_on_resnet18():
    cfg = FinetuneConfig(steps=4, lr=0.05, eval_every=2)
    full = FullFinetune(FullFinetune.parse_options({}, "m"), cfg).run(small(episode(tiny_resnet())))
    grouped = Grouped(Grouped.parse_options({"groups": 1.0}, "m"), cfg).run(small(episode(tiny_resnet())))
    assert grouped.val_curve == full.val_curve and grouped.loss_curve == full.loss_curve
    assert grouped.test_acc == full.test_acc


def test_a_group_of_resnet_channels_moves_as_one_in_filters_scale_and_shift():
    model = tiny_resnet()
    before = copy.deepcopy(model)
    assign = torch.arange(128) // 16  # 8 groups of 16 channels
    x, y = make_images(2, 3, 16)
    cfg = FinetuneConfig(steps=3, lr=0.05, momentum=0.9, weight_decay=0.0, eval_every=100)
    hook = GroupedGradient(model, {"body.layer2.1.conv1": assign})
    train(model, list(model.parameters()), (x, y), (x, y), cfg, CPU, hooks=[hook])
    for name in ("body.layer2.1.conv1.weight", "body.layer2.1.bn1.weight", "body.layer2.1.bn1.bias"):
        step = (
            (model.get_parameter(name) - before.get_parameter(name)).flatten(1)
            if "conv" in name
            else (model.get_parameter(name) - before.get_parameter(name)).unsqueeze(1)
        )
        assert step.abs().sum() > 0, name
        for g in range(8):
            rows = step[assign == g]
            torch.testing.assert_close(rows, rows[:1].expand_as(rows), atol=1e-6, rtol=1e-5)
    bn = model.body.layer2[1].bn1
    assert torch.equal(bn.running_mean, before.body.layer2[1].bn1.running_mean), (
        "statistics stay the source's"
    )


def test_the_population_shares_batchnorm_gradients_as_the_loop_does_on_resnet18():
    models = [tiny_resnet(seed=s) for s in range(2)]
    supports = [make_images(2, 3, 16, seed=s) for s in range(2)]
    groupings = [
        {"body.layer1.0.conv1": torch.arange(64) % 4},
        {"body.layer3.0.downsample.0": torch.arange(256) % 16},
    ]
    cfg = FinetuneConfig(steps=3, lr=0.05, momentum=0.9, eval_every=100)
    pop = train_population(models, supports, supports, cfg, CPU, groupings=groupings)
    for p, (model, grouping) in enumerate(zip(models, groupings, strict=True)):
        model = copy.deepcopy(model)
        train(
            model,
            list(model.parameters()),
            supports[p],
            supports[p],
            cfg,
            CPU,
            hooks=[GroupedGradient(model, grouping)],
        )
        for name, w in model.named_parameters():
            torch.testing.assert_close(pop.params[name][p], w, atol=5e-5, rtol=1e-4)


# ---------------------------------------------------------------- the search's action space on ResNet-18


def test_a_stage_tied_search_chooses_five_counts_that_set_all_twenty_layers(tmp_path):
    model = tiny_resnet()
    eps = [
        SearchEpisode(tiny_task(3, 2, seed=s), tiny_task(3, 2, seed=50 + s), seed=100 + s) for s in range(2)
    ]
    ft = FinetuneConfig(steps=2, eval_every=1)
    stages = ["body.conv1", "body.layer1", "body.layer2", "body.layer3", "body.layer4"]
    for strategy in ("reinforce", "random"):
        cfg = from_dict(
            SearchConfig,
            {
                "budget": 3,
                "menu": [0.25, 1.0],
                "tie": "stage",
                "strategy": strategy,
                "finalists": 1,
                "steps": 1,
            },
            "search",
        )
        trace = search_group_counts(model, eps, 3, cfg, ft, CPU, 0, eps)
        assert trace.layers == stages and trace.n_evaluations == 3, "the same budget for both strategies"
        assert all(set(s.counts) == set(stages) for s in trace.samples)
        save_trace(tmp_path / f"{strategy}.json", trace)
        counts = read_chosen_counts(tmp_path / f"{strategy}.json")
        assert sorted(counts) == sorted(model.groupable())
        for name, g in counts.items():
            assert g == trace.chosen_counts[model.stages()[name]]


def test_tying_layers_of_different_widths_is_an_error_naming_the_field(monkeypatch):
    model = tiny_lenet()
    monkeypatch.setattr(type(model), "stages", lambda self: dict.fromkeys(self.groupable(), "all"))
    with pytest.raises(
        ConfigError, match=r"search.tie: 'stage' needs the layers of stage 'all' to have equal"
    ):
        tie_layers(model.stages(), layer_sizes(model, model.groupable()), "stage")
    assert tie_layers(model.stages(), {"conv1": 5}, "layer") == {"conv1": ["conv1"]}
    assert expand_counts({"s": 4}, {"s": ["a", "b"]}) == {"a": 4, "b": 4}
