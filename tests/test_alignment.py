"""Representation/weight/gradient alignment (kshot.alignment) and its probe in the training loop."""

import copy

import pytest
import torch
from torch.nn import functional as F

from kshot.alignment import RELATIONS, AlignmentProbe, _samples, alignment, layer_alignments
from kshot.config import FinetuneConfig
from kshot.errors import ConfigError
from kshot.finetune import to_input, train
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


def test_the_probe_logs_every_n_steps_from_step_0_and_changes_no_parameter(tiny_model):
    ep = episode(tiny_model)
    cfg = FinetuneConfig(steps=6, eval_every=2, lr=0.05)
    plain, probed = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    for model in (plain, probed):
        model.replace_head(3)
        torch.manual_seed(0)
        model.head.reset_parameters()
    probe = AlignmentProbe(probed.groupable(), ep.support, CPU, every=2)
    train(plain, list(plain.parameters()), ep.support, ep.val, cfg, CPU)
    train(probed, list(probed.parameters()), ep.support, ep.val, cfg, CPU, hooks=[probe])
    for a, b in zip(plain.state_dict().values(), probed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert probe.log["steps"] == [0, 2, 4]
    for layer in probed.groupable():
        assert all(len(v) == 3 for v in probe.log["layers"][layer].values())


def test_a_method_run_with_alignment_every_reports_the_log_in_its_extra(tiny_model):
    ep = episode(tiny_model)
    ep.artifacts["alignment_every"] = 3
    res = make("grouped", groups=0.5).run(ep)
    log = res.extra["alignment"]
    assert log["steps"] == [0, 3]
    assert set(log["layers"]) == set(tiny_model.groupable())
    assert "alignment" not in make("full").run(episode(tiny_model)).extra


def test_a_probe_step_count_below_one_is_an_error_naming_the_field(tiny_model):
    with pytest.raises(ConfigError, match=r"^alignment_every: expected an integer >= 1, found 0"):
        AlignmentProbe(["fc1"], episode(tiny_model).support, CPU, every=0)
