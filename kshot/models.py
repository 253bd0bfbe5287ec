"""Backbones: a LeNet (the paper's Fig. 1 setting), a wider VGG-style CNN and ResNet-18 (two stems).

Every backbone is an :class:`nn.Module` with
- ``features(x)``: images ``[B, C, H, W]`` in [0, 1] -> penultimate features ``[B, D]``;
- ``head``: the ``nn.Linear(D, n_classes)`` classifier that fine-tuning replaces for the target task;
- ``groupable()``: names of the Conv2d/Linear modules (in forward order, head excluded) whose output
  neurons (conv filters, fc units) can be grouped.

Inputs are normalised inside the model with the source training set's mean and std (buffers saved
with the checkpoint), so every stage feeds the same ``[0, 1]`` images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import CheckpointError, unknown


class Backbone(nn.Module):
    """Common plumbing: input normalisation, ``forward = head(features(x))``, groupable layers."""

    head: nn.Linear

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, in_channels, 1, 1))

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set per-channel normalisation, ``mean``/``std`` of shape ``[C]``."""
        self.input_mean.copy_(mean.view(1, -1, 1, 1))
        self.input_std.copy_(std.clamp_min(1e-6).view(1, -1, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def groupable(self) -> list[str]:
        """Names of the Conv2d/Linear modules before the head, in forward order."""
        return [
            name
            for name, m in self.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and not name.startswith("head")
        ]

    def stages(self) -> dict[str, str]:
        """Groupable layer -> the stage it belongs to (layers a search may tie to one choice); here
        each layer is its own stage."""
        return {name: name for name in self.groupable()}

    def norms(self) -> dict[str, str]:
        """Groupable layer -> the BatchNorm that normalises its output channels, where one does
        (none here); its affine parameters are part of the layer's neurons when grouped."""
        return {}

    def resume_points(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Modules the forward pass can be resumed at: name -> the rest of the forward, from that
        module's input to the logits (none here: only the whole forward). Lets a measurement that
        changes one layer (DELTA's channel removals) rerun only what follows it."""
        return {}

    def replace_head(self, n_classes: int) -> None:
        """Swap in a fresh ``nn.Linear`` head for ``n_classes`` (initialised by torch's default)."""
        self.head = nn.Linear(self.head.in_features, n_classes).to(self.head.weight.device)


def _pool_relu(pool: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(pool(x))``, which is ``pool(relu(x))`` bit for bit, rectifying a quarter of the elements.

    ReLU is monotone, so the maximum of a window commutes with it exactly; the gradient reaches the
    same element too (the window's first maximum when it is positive, nothing otherwise, as
    ``relu`` then ``pool`` gives). Rectifying the pooled map reads and writes a quarter of the
    elements, which makes a LeNet's forward pass cheaper on CPU.
    """
    return torch.relu(pool(x))


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class LeNet(Backbone):
    """Caffe's LeNet: conv(20, 5x5)-pool-conv(50, 5x5)-pool-fc(500)-fc(classes); ~430k parameters
    at 28x28. ``width`` scales every hidden layer."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, width: float = 1.0):
        super().__init__(in_channels)
        c1, c2, f1 = _scaled(20, width), _scaled(50, width), _scaled(500, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet needs images of at least 16x16, got {image_size}x{image_size}")
        self.fc1 = nn.Linear(c2 * side * side, f1)
        self.head = nn.Linear(f1, n_classes)
        self.pool = nn.MaxPool2d(2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # pool, then rectify: the same values and gradients as relu-then-pool (see _pool_relu)
        x = _pool_relu(self.pool, self.conv1(self.normalise(x)))  # [B, c1, (S-4)/2, (S-4)/2]
        x = _pool_relu(self.pool, self.conv2(x))  # [B, c2, side, side]
        return torch.relu(self.fc1(x.flatten(1)))  # [B, f1]


class WideCNN(Backbone):
    """An over-parameterised VGG-style CNN: three 3x3 conv blocks (64, 128, 256 filters times
    ``width``), global average pooling, fc(512 x width), head. No BatchNorm, so every parameter is a
    plain per-neuron weight row; ~0.5M parameters at width 1, ~2M at width 2."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, width: float = 1.0):
        super().__init__(in_channels)
        c1, c2, c3, f1 = (_scaled(c, width) for c in (64, 128, 256, 512))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc1 = nn.Linear(c3, f1)
        self.head = nn.Linear(f1, n_classes)
        self.pool = nn.MaxPool2d(2)
        del image_size  # global pooling makes the model size-agnostic

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = _pool_relu(self.pool, self.conv1(self.normalise(x)))  # [B, c1, S/2, S/2]
        x = _pool_relu(self.pool, self.conv2(x))  # [B, c2, S/4, S/4]
        x = torch.relu(self.conv3(x)).mean(dim=(2, 3))  # [B, c3]
        return torch.relu(self.fc1(x))  # [B, f1]


Window = tuple[slice, slice]  # (input indices, kernel taps that read them) along one axis


def pixel_windows(conv: nn.Conv2d, size: tuple[int, int], max_pixels: int) -> list[list[Window]] | None:
    """For ``conv`` on ``[B, C, *size]`` inputs with at most ``max_pixels`` output pixels: per
    axis (rows, columns), per output index, the input indices it reads and the kernel taps that
    read them (the other taps only meet zero padding). ``None`` for larger outputs, or for a
    grouped, dilated or non-zero-padded convolution."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return None
    if not isinstance(conv.padding, tuple):  # 'same' / 'valid'
        return None
    axes = []
    for n, k, s, p in zip(size, conv.kernel_size, conv.stride, conv.padding, strict=True):
        first_taps = [i * s - p for i in range((n + 2 * p - k) // s + 1)]  # input index of tap 0
        axes.append(
            [(slice(max(a, 0), min(a + k, n)), slice(max(a, 0) - a, min(a + k, n) - a)) for a in first_taps]
        )
    if not 1 <= len(axes[0]) * len(axes[1]) <= max_pixels:
        return None
    return axes


class SmallMapConv2d(nn.Conv2d):
    """:class:`nn.Conv2d` computed as one matrix product per output pixel wherever its output has
    at most :attr:`max_pixels` pixels (ResNet-18's last two stages at 32x32 inputs, on 2x2 and 1x1
    maps): each pixel is the product of the input window it reads with the kernel taps that meet
    it, in channels-last order, so the weight's gradient comes back in the weight's own layout.
    The same values and gradients up to float rounding (taps that only meet zero padding get zero
    gradient either way). On CPU, torch's convolution backward on such maps copies the whole
    weight and its gradient between memory layouts at every step whatever the batch, and runs at
    about half its speed there (``benchmarks/bench_small_maps.py``, which also measures a bound of 16
    pixels, taking in layer 2's 4x4 maps). Tensors on another device (CUDA) keep torch's
    convolution: the layout copies are the CPU backward's, and one kernel launch beats several."""

    max_pixels: int = 4  # a class default; an instance may set its own (the benchmark does)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        axes = (
            pixel_windows(self, (x.shape[-2], x.shape[-1]), self.max_pixels)
            if x.device.type == "cpu"
            else None
        )
        if axes is None:
            return super()._conv_forward(x, weight, bias)
        x_last, w_last = x.movedim(-3, -1), weight.movedim(1, -1)  # [..., H, W, C], [O, kh, kw, C]
        pixels = [
            F.linear(x_last[..., rows, cols, :].flatten(-3), w_last[:, taps_r, taps_c, :].flatten(1), bias)
            for rows, taps_r in axes[0]
            for cols, taps_c in axes[1]
        ]  # each [..., O]
        out = torch.stack(pixels, dim=-2).unflatten(-2, (len(axes[0]), len(axes[1])))
        return out.movedim(-1, -3)  # [..., O, H_out, W_out], channels-last strides


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A strided 1x1 convolution without padding computed as the stride-1 convolution of the
    pixels it reads (the input subsampled by its stride): the same values and gradients. torch
    2.14.1's oneDNN CPU backward of such a convolution on fewer than 8 input channels in
    channels-last layout returns a wrong weight gradient in most steps, and with one thread can
    corrupt the heap (found on an AVX2 machine at strides 2 and 4; stride 1 and 8 or more input
    channels are right). :func:`build_backbone` gives this class to every such convolution."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows, cols = self.stride
        return F.conv2d(x[..., ::rows, ::cols], weight, bias)


def avoid_strided_pointwise_backward(model: nn.Module) -> None:
    """Make every plain strided 1x1 convolution of ``model`` without padding, on fewer than 8
    input channels, a :class:`SubsampledPointwiseConv2d` (same parameters and state dict)."""
    for conv in model.modules():
        if (
            type(conv) is nn.Conv2d
            and conv.kernel_size == (1, 1)
            and conv.stride != (1, 1)
            and conv.padding in ((0, 0), "valid")
            and conv.groups == 1
            and conv.in_channels < 8
        ):
            conv.__class__ = SubsampledPointwiseConv2d


class ResNet18(Backbone):
    """torchvision's ResNet-18, unchanged but for its input channels and head: a 7x7 stride-2 stem
    with max-pooling at every image size, so ImageNet weights (downloaded or from a local file) fit
    it key for key. At 32x32 its last stage works on 1x1 maps, about 7x cheaper per image than the
    CIFAR stem of :class:`ResNet18Cifar`, and its convolutions are :class:`SmallMapConv2d`, matrix
    products where their output has at most 4 pixels. BatchNorm layers stay in eval mode while fine-tuning
    (see :mod:`kshot.finetune`)."""

    kept: ClassVar[frozenset[str]] = frozenset()  # body tensors a weights file does not set

    def __init__(self, in_channels: int, image_size: int, n_classes: int, width: float = 1.0):
        super().__init__(in_channels)
        del width, image_size  # torchvision's ResNet-18 has a fixed width; global pooling at the end
        import torchvision  # lazily: importing it costs every job about 1.7 s

        body = torchvision.models.resnet18(weights=None)
        if in_channels != 3:
            body.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        body.fc = nn.Identity()
        for conv in body.modules():
            if type(conv) is nn.Conv2d:  # same parameters and state dict; see SmallMapConv2d
                conv.__class__ = SmallMapConv2d
        self.body = body
        self.head = nn.Linear(512, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalise(x))  # [B, 512]

    def stages(self) -> dict[str, str]:
        """Groupable layer -> its stage: the stem (``body.conv1``) or a residual stage
        (``body.layer1`` ... ``body.layer4``), shortcut convolutions included."""
        return {name: ".".join(name.split(".")[:2]) for name in self.groupable()}

    def norms(self) -> dict[str, str]:
        """Each conv's BatchNorm: ``conv1`` -> ``bn1``, ``conv2`` -> ``bn2`` (stem and blocks) and
        ``downsample.0`` -> ``downsample.1`` (shortcuts)."""
        out = {}
        for name in self.groupable():
            parent, _, leaf = name.rpartition(".")
            norm = f"{parent}.{leaf.replace('conv', 'bn')}" if leaf.startswith("conv") else f"{parent}.1"
            out[name] = norm
        return out

    def resume_points(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Each residual stage (``body.layer1`` ... ``body.layer4``): from its input, the stages
        from it on, then torchvision's average pooling, flattening and (in ``fc``'s place) the head."""
        stages = ["layer1", "layer2", "layer3", "layer4"]

        def rest(first: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def run(x: torch.Tensor) -> torch.Tensor:
                for name in stages[first:]:
                    x = getattr(self.body, name)(x)
                return self.head(torch.flatten(self.body.avgpool(x), 1))

            return run

        return {f"body.{name}": rest(i) for i, name in enumerate(stages)}

    def load_torchvision(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load a torchvision ResNet-18 ``state`` dict (ImageNet's or any other) into the body.

        The source classifier (``fc.*``) and the body's tensors in ``kept`` (those a variant
        changed, kept as initialised) are not loaded. A 3-channel stem loaded into a network of
        another input channel count is summed over its colour channels (grayscale images then see
        the filters' luminance response, the usual adaptation). Any other missing, unexpected or
        mis-shaped tensor raises :class:`CheckpointError` naming ``where``.
        """
        state = {k: v for k, v in state.items() if not k.startswith("fc.") and k not in self.kept}
        stem = state.get("conv1.weight")
        channels = self.body.conv1.in_channels
        if stem is not None and stem.ndim == 4 and stem.shape[1] == 3 and channels != 3:
            state["conv1.weight"] = stem.sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels
        own = {k: v for k, v in self.body.state_dict().items() if k not in self.kept}
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or extra or shapes:
            parts = [
                f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", extra), ("mis-shaped", shapes))
                if keys
            ]
            raise CheckpointError(
                f"{where}: expected a torchvision resnet18 state dict, found another architecture: "
                + "; ".join(parts)
            )
        self.body.load_state_dict(state, strict=not self.kept)

    def load_imagenet(self) -> None:
        """Copy torchvision's ImageNet weights into the body (needs the network; never in tests)."""
        import torchvision

        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        self.load_torchvision(weights.get_state_dict(progress=False), "ImageNet weights")


class ResNet18Cifar(ResNet18):
    """ResNet-18 with the CIFAR stem: a 3x3 stride-1 conv without max-pooling, which keeps the
    first stage at the full image size (small images; about 7x the cost of :class:`ResNet18` at
    32x32). Weights files load as for :class:`ResNet18` but for the stem, which stays initialised."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, width: float = 1.0):
        super().__init__(in_channels, image_size, n_classes, width)
        self.body.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.body.maxpool = nn.Identity()

    kept: ClassVar[frozenset[str]] = frozenset({"conv1.weight"})


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "lenet": LeNet,
    "widecnn": WideCNN,
    "resnet18": ResNet18,
    "resnet18_cifar": ResNet18Cifar,
}


def build_backbone(
    name: str, in_channels: int, image_size: int, n_classes: int, width: float = 1.0
) -> Backbone:
    """Instantiate backbone ``name`` for ``[B, in_channels, image_size, image_size]`` inputs (its
    strided 1x1 convolutions on few channels made :class:`SubsampledPointwiseConv2d`)."""
    if name not in BACKBONES:
        raise unknown("backbone", name, BACKBONES)
    model = BACKBONES[name](in_channels, image_size, n_classes, width)
    avoid_strided_pointwise_backward(model)
    return model
