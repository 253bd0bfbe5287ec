"""Representation/weight/gradient alignment (kshot.alignment) and its probe in the training loop."""

import copy

import pytest
import torch
from torch.nn import functional as F

from kshot.alignment import RELATIONS, AlignmentProbe, _samples, alignment, layer_alignments
from kshot.config import FinetuneConfig
from kshot.errors import ConfigError
from kshot.finetune import to_input, train
from kshot.methods.base import check_probed
from tests.test_methods import episode, make

CPU = torch.device("cpu")


def test_a_matrix_is_aligned_with_itself_and_its_positive_multiples_and_anti_aligned_with_its_negative():
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    a = a @ a.T
    assert alignment(a, a) == pytest.approx(1.0)
    assert alignment(a, 7.0 * a) == pytest.approx(1.0)
    assert alignment(a, -a) == pytest.approx(-1.0)
    assert alignment(a, torch.eye(5)) < 0.99
    with pytest.raises(ConfigError, match=r"^b: expected a matrix of shape \[5, 5\] like a, found \[4, 4\]"):
        alignment(a, torch.eye(4))


def test_a_conv_layers_samples_are_its_unfolded_patches_mapped_by_the_flattened_weight(tiny_model):
    conv = tiny_model.conv2
    x = torch.randn(3, conv.in_channels, 9, 9)
    out = conv(x)
    h_a, h_b, _, w = _samples(conv, x, out, torch.zeros_like(out))
    assert h_a.shape == (3 * out.shape[2] * out.shape[3], w.shape[1])
    torch.testing.assert_close(h_a @ w.T + conv.bias, h_b, atol=1e-5, rtol=1e-5)


def test_the_input_side_matrices_are_those_of_autograds_gradient_wrt_the_layers_input(tiny_model):
    """G_a (from g_b W) against the second moment of the gradient autograd gives fc1's input."""
    x, y = episode(tiny_model).support
    model = copy.deepcopy(tiny_model).eval()
    seen = {}

    def keep(_m, args, _out):
        args[0].retain_grad()
        seen["h_a"] = args[0]

    handle = model.fc1.register_forward_hook(keep)
    F.cross_entropy(model(to_input(x, CPU)), y).backward()
    handle.remove()
    h_a, g_a = seen["h_a"].detach().double(), seen["h_a"].grad.double()
    w = model.fc1.weight.detach().double()
    values = layer_alignments(model, ["fc1"], (x, y), CPU)["fc1"]
    assert set(values) == set(RELATIONS)
    assert values["in: H~G"] == pytest.approx(alignment(h_a.T @ h_a, g_a.T @ g_a), abs=1e-9)
    assert values["in: G~WᵀW"] == pytest.approx(alignment(g_a.T @ g_a, w.T @ w), abs=1e-9)


def _headed(model):
    model = copy.deepcopy(model)
    model.replace_head(3)
    torch.manual_seed(0)
    model.head.reset_parameters()
    return model


def test_the_probe_logs_step_0_every_n_updates_and_the_last_and_changes_no_parameter(tiny_model):
    ep = episode(tiny_model)
    cfg = FinetuneConfig(steps=7, eval_every=2, lr=0.05)
    plain, probed = _headed(tiny_model), _headed(tiny_model)
    before = layer_alignments(_headed(tiny_model).train(), probed.groupable(), ep.support, CPU)
    probe = AlignmentProbe(probed.groupable(), ep.support, CPU, every=3, steps=cfg.steps)
    train(plain, list(plain.parameters()), ep.support, ep.val, cfg, CPU)
    train(probed, list(probed.parameters()), ep.support, ep.val, cfg, CPU, hooks=[probe])
    for a, b in zip(plain.state_dict().values(), probed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert probe.log["steps"] == [0, 3, 6, 7]
    for layer in probed.groupable():
        assert all(len(v) == 4 for v in probe.log["layers"][layer].values())
        for rel, values in before[layer].items():  # step 0 is the state before any update
            assert probe.log["layers"][layer][rel][0] == pytest.approx(values, abs=1e-6)
    assert probe.log["layers"]["fc1"]["in: H~G"][-1] != pytest.approx(before["fc1"]["in: H~G"], abs=1e-6)


def test_a_grouped_run_with_the_probe_trains_as_without_it_to_float_rounding(tiny_model):
    plain = make("grouped", groups=0.5).run(episode(tiny_model))
    ep = episode(tiny_model)
    ep.artifacts["alignment_every"] = 3
    probed = make("grouped", groups=0.5).run(ep)
    assert probed.extra["alignment"]["steps"] == [0, 3, 6]
    assert set(probed.extra["alignment"]["layers"]) == set(tiny_model.groupable())
    assert probed.test_acc == pytest.approx(plain.test_acc, abs=0.05)
    assert [v for _, v in probed.loss_curve] == pytest.approx([v for _, v in plain.loss_curve], rel=1e-4)
    assert "alignment" not in plain.extra


def test_a_probe_step_count_below_one_and_a_method_outside_the_shared_loop_are_errors_naming_the_flag(
    tiny_model,
):
    with pytest.raises(ConfigError, match=r"^--alignment-every: expected an integer >= 1, found 0"):
        AlignmentProbe(["fc1"], episode(tiny_model).support, CPU, every=0, steps=5)
    for kind in ("linear", "lpft", "centroid"):
        with pytest.raises(
            ConfigError, match=rf"^--alignment-every: expected a method that fine-tunes .*, found {kind} "
        ):
            check_probed(make(kind))
    check_probed(make("grouped", groups=0.5))
    check_probed(make("l2sp"))
