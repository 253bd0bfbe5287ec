"""The C kernel of the shared gradient (kshot.native): bitwise the PyTorch path's results, built on
first use, and a clear fallback where it cannot be built."""

import os
import shlex
import shutil

import pytest
import torch
import torch.nn.functional as F
from tiny_nets import tiny_lenet, tiny_task
from torch import nn

from kshot import native
from kshot.config import FinetuneConfig
from kshot.finetune import to_input, train
from kshot.shared_grad import GroupedGradient

CPU = torch.device("cpu")
NEEDS_CC = pytest.mark.skipif(
    shutil.which(shlex.split(os.environ.get("CC") or "cc")[0]) is None,
    reason="no C compiler ($CC or cc) on this machine",
)
GROUPS = {"conv1": torch.tensor([0, 1, 0, 2, 1]), "conv2": torch.arange(12) % 4, "fc1": torch.arange(125) % 7}


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A kernel resolved anew from an empty cache folder (and resolved anew again afterwards)."""
    monkeypatch.setenv("KSHOT_CACHE_DIR", str(tmp_path / "cache"))
    native.group_mean_kernel.cache_clear()
    yield tmp_path / "cache"
    native.group_mean_kernel.cache_clear()


def kinds(hook):
    return sorted(type(part).__name__ for part in hook._parts)


@NEEDS_CC
def test_the_kernel_builds_and_averages_every_cpu_parameter_in_one_call(fresh_kernel):
    model = tiny_lenet()
    hook = GroupedGradient(model, GROUPS)
    assert kinds(hook) == ["_NativeRows"]
    assert len(list(fresh_kernel.glob("group_mean-*.so"))) == 1
    assert not list(fresh_kernel.glob(".*tmp"))  # no temporary file left behind
    assert kinds(GroupedGradient(model, GROUPS, native=False)) == ["_Rows"] * 6


@NEEDS_CC
@pytest.mark.parametrize(
    "cfg",
    [
        FinetuneConfig(steps=6, lr=0.05, momentum=0.9, eval_every=2),  # fc1 through its deltas
        FinetuneConfig(steps=6, lr=0.05, momentum=0.9, weight_decay=1e-3, eval_every=100),  # averaged
    ],
)
@pytest.mark.parametrize("share_bias", [True, False])
def test_native_and_pytorch_fine_tuning_are_bitwise_identical(fresh_kernel, cfg, share_bias):
    task = tiny_task()
    states = []
    for use_native in (True, False):
        model = tiny_lenet()
        hook = GroupedGradient(model, GROUPS, share_bias=share_bias, native=use_native)
        assert ("_NativeRows" in kinds(hook)) == use_native
        torch.manual_seed(0)
        train(model, list(model.parameters()), task, task, cfg, CPU, hooks=[hook])
        states.append(model.state_dict())
    moved = 0
    for (name, a), b in zip(states[0].items(), states[1].values(), strict=True):
        assert torch.equal(a, b), name
        moved += not torch.equal(a, tiny_lenet().state_dict()[name])
    assert moved >= 6


@NEEDS_CC
@pytest.mark.parametrize("n, d, groups", [(7, 1, 3), (40, 3, 40), (64, 257, 5), (9, 10, 1)])
def test_odd_shapes_and_noncontiguous_gradients_match_bitwise(fresh_kernel, n, d, groups):
    gen = torch.Generator().manual_seed(n * d)
    assign = torch.cat([torch.arange(groups), torch.randint(groups, (n - groups,), generator=gen)])
    grads = []
    for use_native in (True, False):
        layer = nn.Linear(d, n)
        hook = GroupedGradient(layer, {"": assign}, native=use_native)
        assert ("_NativeRows" in kinds(hook)) == (use_native and groups < n)  # n groups: no work
        layer.weight.grad = torch.randn(d, n, generator=torch.Generator().manual_seed(1)).t()  # transposed
        layer.bias.grad = torch.randn(n, generator=torch.Generator().manual_seed(2)) * 1e3
        hook(layer)
        grads.append((layer.weight.grad, layer.bias.grad))
    for native_grad, torch_grad in zip(*grads, strict=True):
        assert torch.equal(native_grad, torch_grad)
    for g in range(groups):
        rows = grads[0][0][assign == g]
        assert torch.equal(rows, rows[:1].expand_as(rows))


@NEEDS_CC
def test_channels_last_gradients_and_missing_ones_match_bitwise(fresh_kernel):
    grads = []
    for use_native in (True, False):
        model = tiny_lenet().to(memory_format=torch.channels_last)
        hook = GroupedGradient(model, GROUPS, native=use_native)
        assert ("_NativeRows" in kinds(hook)) == use_native
        images, labels = tiny_task()
        F.cross_entropy(model(to_input(images, CPU)), labels).backward()
        assert model.conv2.weight.grad.is_contiguous(memory_format=torch.channels_last)
        assert not model.conv2.weight.grad.is_contiguous()
        model.conv1.bias.grad = None  # a part without a gradient is skipped
        hook(model)
        assert model.conv1.bias.grad is None
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name


@NEEDS_CC
def test_a_model_moved_after_the_hook_was_built_is_a_named_error(fresh_kernel):
    model = tiny_lenet()
    hook = GroupedGradient(model, GROUPS)
    model.double()
    images, labels = tiny_task()
    F.cross_entropy(model(to_input(images, CPU).double()), labels).backward()
    with pytest.raises(RuntimeError, match=r"torch\.float64 on cpu, expected float32"):
        hook(model)


def test_float64_and_missing_gradients_take_the_pytorch_path():
    model = tiny_lenet().double()
    hook = GroupedGradient(model, GROUPS)
    assert kinds(hook) == ["_Rows"] * 6
    model = tiny_lenet()
    GroupedGradient(model, GROUPS)(model)  # no gradients yet: nothing to average, no error


def test_a_compiler_that_fails_gives_a_warning_naming_the_source_and_the_pytorch_path(
    fresh_kernel, monkeypatch
):
    monkeypatch.setenv("CC", "false")  # exits 1
    with pytest.warns(RuntimeWarning, match=r"group_mean\.c.*exit code 1.*same results"):
        assert native.group_mean_kernel() is None
    assert not list(fresh_kernel.iterdir())  # nothing half-written left
    native.group_mean_kernel.cache_clear()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="nonexistent"):
        hook = GroupedGradient(tiny_lenet(), GROUPS)
    assert kinds(hook) == ["_Rows"] * 6


@NEEDS_CC
def test_a_corrupt_cached_library_is_rebuilt(fresh_kernel):
    lib = native.build()
    lib.write_bytes(b"not a shared library")
    assert native.group_mean_kernel() is not None
    assert lib.read_bytes() != b"not a shared library"


def test_kshot_native_0_turns_the_kernel_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("KSHOT_NATIVE", "0")
    assert native.group_mean_kernel() is None
    assert kinds(GroupedGradient(tiny_lenet(), GROUPS)) == ["_Rows"] * 6
    assert not fresh_kernel.exists()
