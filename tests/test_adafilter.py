import copy

import pytest
import torch
from torch import nn

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError
from kshot.finetune import to_input
from kshot.methods.adafilter import AdaFilter, GatedConv, wrap
from kshot.methods.linear import LinearProbe
from kshot.models import ResNet18, WideCNN
from tests.test_methods import episode


def make(steps=6, eval_every=2, **options):
    return AdaFilter(
        AdaFilter.parse_options(options, "methods.adafilter"),
        FinetuneConfig(steps=steps, eval_every=eval_every),
    )


def tiny_resnet():
    torch.manual_seed(0)
    return ResNet18(in_channels=1, image_size=16, n_classes=3)


def small_episode(model, seed=0):
    """``episode`` with 7x7 images, which keeps a ResNet-18 step fast."""
    ep = episode(model, seed=seed)
    for part in ("support", "val", "test"):
        x, y = getattr(ep, part)
        setattr(ep, part, (x[..., ::4, ::4].contiguous(), y))
    return ep


def fc1_input(model, images):
    """What ``model`` feeds its ``fc1`` for uint8 ``images``: the output of the conv part."""
    seen = []
    handle = model.fc1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        model(to_input(images, torch.device("cpu")))
    handle.remove()
    return seen[0]


def test_forced_pretrained_gates_compute_the_frozen_source_convs_while_fc1_trains(tiny_model):
    ep = episode(tiny_model)
    fc1_before = tiny_model.fc1.weight.clone()
    res = make(lr=0.1, force_gate="pretrained").run(ep)
    assert torch.equal(fc1_input(ep.model, ep.test[0]), fc1_input(tiny_model, ep.test[0]))
    assert not torch.equal(ep.model.fc1.weight, fc1_before), "the ungated fc1 should fine-tune"
    assert res.extra["gate_open"] == {"conv1": 0.0, "conv2": 0.0}


class HeadOnlyAdaFilter(AdaFilter):
    def trainable(self, model):
        return list(model.head.parameters())


def test_forced_pretrained_gates_with_a_frozen_fc_reproduce_the_linear_probe(tiny_model):
    cfg = FinetuneConfig(steps=6, eval_every=2)
    ours = HeadOnlyAdaFilter(AdaFilter.parse_options({"force_gate": "pretrained"}, "m"), cfg)
    probe = LinearProbe(LinearProbe.parse_options({}, "m"), cfg)
    a, b = ours.run(episode(tiny_model)).metrics(), probe.run(episode(tiny_model)).metrics()
    # the probe caches the features in another memory layout: the losses agree up to float rounding
    losses_a, losses_b = a.pop("loss_curve"), b.pop("loss_curve")
    assert [s for s, _ in losses_a] == [s for s, _ in losses_b]
    assert [v for _, v in losses_a] == pytest.approx([v for _, v in losses_b], rel=1e-5)
    del a["extra"], b["extra"]
    assert a == b


def tiny_widecnn():
    torch.manual_seed(0)
    return WideCNN(in_channels=1, image_size=7, n_classes=3, width=0.125)


@pytest.mark.parametrize("backbone", ["lenet", "resnet18", "widecnn"])
def test_wrapped_network_equals_the_source_at_init_whatever_the_gates_pick(tiny_model, backbone):
    source = {"lenet": tiny_model, "resnet18": tiny_resnet(), "widecnn": tiny_widecnn()}[backbone]
    images = episode(source).test[0] if backbone == "lenet" else small_episode(source).test[0]
    x = to_input(images[:4], torch.device("cpu"))
    expected = source.eval()(x)
    for force in (None, "finetuned", "pretrained"):
        model = copy.deepcopy(source)
        wrap(model, hidden=8, gate_init=0.0, tau=1.0, force=force)
        assert _bns(model) == {m for g in model.modules() if isinstance(g, GatedConv) for m in _bns(g)}
        model.eval()
        assert torch.equal(model(x), expected), force
        model.adafilter_gate.train()  # noisy training gates
        assert torch.equal(model(x), expected), force


def _bns(module):
    return {m for m in module.modules() if isinstance(m, nn.BatchNorm2d)}


def test_training_moves_the_finetuned_filters_and_never_the_pretrained_ones(tiny_model):
    ep = episode(tiny_model)
    make(lr=0.1, force_gate="finetuned").run(ep)
    for name in ("conv1", "conv2"):
        gated = getattr(ep.model, name)
        assert torch.equal(gated.source.weight, getattr(tiny_model, name).weight), name
        assert torch.equal(gated.source.bias, getattr(tiny_model, name).bias), name
        assert not torch.equal(gated.tuned.weight, gated.source.weight), name


def test_learned_gates_keep_the_pretrained_filters_frozen_on_resnet18():
    source = tiny_resnet()
    ep = small_episode(source)
    make(steps=2, eval_every=2, lr=0.1).run(ep)
    gated = ep.model.body.layer1[0].conv1
    conv, bn = source.body.layer1[0].conv1, source.body.layer1[0].bn1
    assert torch.equal(gated.source[0].weight, conv.weight)
    assert torch.equal(gated.source[1].weight, bn.weight)
    assert not torch.equal(gated.tuned[0].weight, conv.weight)
    assert not torch.equal(gated.tuned[1].weight, bn.weight), "the fine-tuned BN's affine trains"


def test_gates_get_a_gradient_once_the_branches_differ(tiny_model):
    model = copy.deepcopy(tiny_model)
    controller = wrap(model, hidden=8, gate_init=0.0, tau=1.0, force=None)
    with torch.no_grad():
        model.conv2.tuned.weight.mul_(1.5)
    model.train()
    x = to_input(episode(tiny_model).support[0], torch.device("cpu"))
    model(x).pow(2).sum().backward()
    assert controller.out[1].weight.grad.abs().sum() > 0
    assert controller.cell.weight_ih.grad.abs().sum() > 0


def test_eval_gates_are_deterministic_and_training_gates_are_sampled(tiny_model):
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_model)
    controller = wrap(model, hidden=8, gate_init=0.0, tau=1.0, force=None)
    x = to_input(episode(tiny_model).test[0], torch.device("cpu"))
    inp = model.normalise(x)
    controller.eval()
    assert torch.equal(controller(0, inp), controller(0, inp))
    controller.train()
    a, b = controller(0, inp), controller(0, inp)
    assert not torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("backbone", ["lenet", "resnet18"])
def test_learned_gates_run_report_fractions_and_are_deterministic_for_a_seed(tiny_model, backbone):
    if backbone == "lenet":
        runs = [make().run(episode(tiny_model, seed=3)) for _ in range(2)]
    else:
        source = tiny_resnet()
        runs = [make(steps=2, eval_every=2).run(small_episode(source, seed=3)) for _ in range(2)]
    res = runs[0]
    assert 0.0 <= res.test_acc <= 1.0 and 0.0 <= res.val_acc <= 1.0
    gates = res.extra["gate_open"]
    assert len(gates) == (2 if backbone == "lenet" else 20)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in gates.values())
    assert runs[0].metrics() == runs[1].metrics()


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden", 0), ("temperature", 0.0), ("gate_init", float("inf")), ("force_gate", "pretrain")],
)
def test_invalid_options_name_their_field_in_one_line(field, value):
    with pytest.raises(ConfigError, match=rf"^methods\.adafilter\.{field}: expected") as err:
        AdaFilter.parse_options({field: value}, "methods.adafilter")
    assert "\n" not in str(err.value)
