import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_nets import tiny_lenet, tiny_task
from torch import nn

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError, DataError
from kshot.finetune import to_input, train
from kshot.shared_grad import GroupedGradient, group_mean_rows_, inverse_counts

CPU = torch.device("cpu")
CFG = FinetuneConfig(steps=4, lr=0.05, momentum=0.9, weight_decay=0.0, eval_every=100)


def fit(model, hook=None, cfg=CFG):
    task = tiny_task()
    torch.manual_seed(0)
    train(model, list(model.parameters()), task, task, cfg, CPU, hooks=[hook] if hook else [])
    return model


def grads_of(model):
    images, labels = tiny_task()
    model.zero_grad()
    F.cross_entropy(model(to_input(images, CPU)), labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_one_neuron_per_group_is_exactly_standard_finetuning():
    plain = fit(tiny_lenet())
    model = tiny_lenet()
    identity = {"conv1": torch.randperm(5), "conv2": torch.arange(12), "fc1": torch.arange(125)}
    grouped = fit(model, GroupedGradient(model, identity))
    for (name, a), b in zip(plain.state_dict().items(), grouped.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_singleton_group_mean_kernel_is_bitwise_identity():
    rows = torch.randn(6, 7)
    assign = torch.tensor([3, 0, 5, 1, 4, 2])
    out = group_mean_rows_(rows.clone(), assign, inverse_counts(assign, 6), 6)
    assert torch.equal(out, rows)


def test_gradient_rows_become_their_group_mean_for_weight_and_bias():
    model = tiny_lenet()
    raw = grads_of(model)
    assign = torch.tensor([0, 1, 0, 2, 1])
    GroupedGradient(model, {"conv1": assign})(model)
    for g in range(3):
        members = assign == g
        for pname in ("conv1.weight", "conv1.bias"):
            mean = raw[pname][members].mean(0)
            for row in model.get_parameter(pname).grad[members]:
                torch.testing.assert_close(row, mean)


def test_neurons_of_a_group_receive_identical_updates():
    model = tiny_lenet()
    before = copy.deepcopy(model)
    assign = {"conv2": torch.arange(12) % 4, "fc1": torch.arange(125) // 25}
    fit(model, GroupedGradient(model, assign))
    for layer, a in assign.items():
        delta_w = model.get_submodule(layer).weight - before.get_submodule(layer).weight
        delta_b = model.get_submodule(layer).bias - before.get_submodule(layer).bias
        for g in range(int(a.max()) + 1):
            members = (a == g).nonzero().flatten()
            for i in members[1:]:
                torch.testing.assert_close(delta_w[i], delta_w[members[0]], atol=1e-6, rtol=0)
                torch.testing.assert_close(delta_b[i], delta_b[members[0]], atol=1e-6, rtol=0)
        assert not torch.allclose(delta_w[0], delta_w[1])  # different groups move differently


def test_groups_of_one_layer_do_not_leak_into_other_layers():
    model = tiny_lenet()
    raw = grads_of(model)
    GroupedGradient(model, {"conv2": torch.zeros(12, dtype=torch.long)})(model)
    for name, p in model.named_parameters():
        if not name.startswith("conv2."):
            assert torch.equal(p.grad, raw[name]), name
    assert torch.allclose(model.conv2.weight.grad, raw["conv2.weight"].mean(0, keepdim=True))


def test_bias_can_keep_its_own_gradient():
    model = tiny_lenet()
    raw = grads_of(model)
    GroupedGradient(model, {"conv1": torch.zeros(5, dtype=torch.long)}, share_bias=False)(model)
    assert torch.equal(model.conv1.bias.grad, raw["conv1.bias"])
    assert not torch.equal(model.conv1.weight.grad, raw["conv1.weight"])


def test_a_batchnorm_the_model_does_not_name_as_its_convs_is_not_grouped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(3, 1, 6, 6)
    model(x).sum().backward()
    bn = {n: p.grad.clone() for n, p in model[1].named_parameters()}
    GroupedGradient(model, {"0": torch.zeros(4, dtype=torch.long)})(model)
    for n, p in model[1].named_parameters():
        assert torch.equal(p.grad, bn[n])


def test_bad_assignments_are_named_errors():
    model = tiny_lenet()
    with pytest.raises(DataError, match=r"assignments\.conv1"):
        GroupedGradient(model, {"conv1": torch.arange(4)})
    with pytest.raises(ConfigError, match="'pool'"):
        GroupedGradient(model, {"pool": torch.arange(4)})


def test_channels_last_conv_gradient_is_averaged_in_place_like_a_contiguous_one():
    assign = torch.arange(12) % 4
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = tiny_lenet().to(memory_format=fmt)
        grads_of(model)
        grad = model.conv2.weight.grad
        assert grad.is_contiguous(memory_format=fmt)
        hook = GroupedGradient(model, {"conv2": assign})
        hook(model)
        hook(model)  # the reused scratch buffer starts from zero each time
        assert model.conv2.weight.grad is grad  # averaged in place, no copy
        results.append(grad.contiguous())
    torch.testing.assert_close(results[0], results[1])
    for g in range(4):
        rows = results[1][assign == g]
        assert torch.equal(rows, rows[:1].expand_as(rows))


# Group deltas: coarsely grouped linear layers train through one delta row per group.

COARSE = {"conv2": torch.arange(12) % 4, "fc1": torch.arange(125) % 7}  # fc1: 7 groups <= 125/2


def fit_grouped(assign, cfg=CFG, share_bias=True):
    model = tiny_lenet()
    return fit(model, GroupedGradient(model, assign, share_bias=share_bias), cfg)


@pytest.mark.parametrize("share_bias", [True, False])
@pytest.mark.parametrize("eval_every", [100, 1])  # 1: best states saved and restored while swapped
def test_group_deltas_give_the_averaged_gradients_updates(monkeypatch, share_bias, eval_every):
    from kshot import shared_grad

    used = []
    forward = shared_grad.GroupDeltaLinear.forward
    monkeypatch.setattr(
        shared_grad.GroupDeltaLinear, "forward", lambda self, x: used.append(1) or forward(self, x)
    )
    cfg = FinetuneConfig(steps=8, lr=0.05, momentum=0.9, eval_every=eval_every)
    deltas = fit_grouped(COARSE, cfg=cfg, share_bias=share_bias)
    assert used  # fc1 trained through its deltas
    used.clear()
    monkeypatch.setattr(shared_grad, "DELTA_MAX_FRACTION", 0.0)  # every layer by the hook
    averaged = fit_grouped(COARSE, cfg=cfg, share_bias=share_bias)
    assert not used
    changed = 0
    for (name, a), b in zip(averaged.state_dict().items(), deltas.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
        changed += not torch.equal(a, tiny_lenet().state_dict()[name])
    assert changed >= 6  # the runs did move the weights


def test_group_deltas_are_folded_back_into_the_models_own_tensors():
    model = tiny_lenet()
    fc1, weight, bias = model.fc1, model.fc1.weight, model.fc1.bias
    keys = list(model.state_dict())
    hook = GroupedGradient(model, COARSE)
    trainable = hook.attach(list(model.parameters()))
    assert type(model.fc1).__name__ == "GroupDeltaLinear"
    ids = {id(p) for p in trainable}
    assert id(weight) not in ids and id(model.fc1.delta) in ids
    assert hook.averaged() == [model.conv2.weight, model.conv2.bias]
    with torch.no_grad():
        model.fc1.delta.add_(1.0)
    hook.detach()
    assert model.fc1 is fc1 and model.fc1.weight is weight and model.fc1.bias is bias
    assert list(model.state_dict()) == keys
    assert len(hook.averaged()) == 4
    # every neuron moved by its group's delta scaled by 1/sqrt(|group|)
    sizes = torch.bincount(COARSE["fc1"])[COARSE["fc1"]].float()
    before = tiny_lenet().fc1.weight
    torch.testing.assert_close(weight - before, (1 / sizes.sqrt())[:, None].expand_as(weight))
    hook.detach()  # idempotent


def test_group_deltas_only_when_the_update_is_the_same(monkeypatch):
    from kshot import shared_grad

    made = []
    init = shared_grad.GroupDeltaLinear.__init__
    monkeypatch.setattr(
        shared_grad.GroupDeltaLinear, "__init__", lambda self, *a: made.append(1) or init(self, *a)
    )
    decay = FinetuneConfig(steps=4, lr=0.05, momentum=0.9, weight_decay=1e-3, eval_every=100)
    fit_grouped(COARSE, cfg=decay)
    assert not made  # weight decay is per neuron: averaged gradients
    fine = {"conv2": COARSE["conv2"], "fc1": torch.arange(125) % 70}  # 70 groups > 125/2
    fit_grouped(fine)
    assert not made
    fit_grouped(COARSE)
    assert made


def test_a_failed_run_puts_the_layers_back(monkeypatch):
    from kshot import finetune

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "to_input", boom)  # fails inside the run, after attach
    model = tiny_lenet()
    fc1 = model.fc1
    hook = GroupedGradient(model, COARSE)
    with pytest.raises(KeyboardInterrupt):
        train(model, list(model.parameters()), tiny_task(), tiny_task(), CFG, CPU, hooks=[hook])
    assert model.fc1 is fc1
    assert not hook._deltas and len(hook.averaged()) == 4
    monkeypatch.undo()
    train(model, list(model.parameters()), tiny_task(), tiny_task(), CFG, CPU, hooks=[hook])
    assert model.fc1 is fc1


def test_group_deltas_keep_a_frozen_bias_frozen_and_a_missing_bias_missing():
    model = tiny_lenet()
    bias = model.fc1.bias.detach().clone()
    hook = GroupedGradient(model, COARSE)
    trainable = [p for p in model.parameters() if p is not model.fc1.bias]
    train(model, trainable, tiny_task(), tiny_task(), CFG, CPU, hooks=[hook])
    assert torch.equal(model.fc1.bias, bias)
    assert not torch.equal(model.fc1.weight, tiny_lenet().fc1.weight)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 8, bias=False), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(net)
    assign = {"1": torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])}  # 2 groups <= 8/2
    task = tiny_task()
    hook = GroupedGradient(net, assign)
    train(net, list(net.parameters()), task, task, CFG, CPU, hooks=[hook])
    assert isinstance(net[1], nn.Linear) and net[1].bias is None
    averaged = GroupedGradient(reference, assign)
    averaged.attach = lambda trainable: trainable  # the hook path
    averaged.detach = lambda: None
    train(reference, list(reference.parameters()), task, task, CFG, CPU, hooks=[averaged])
    torch.testing.assert_close(net[1].weight, reference[1].weight, rtol=1e-4, atol=1e-6)
