"""Representation, weight and gradient alignment of a layer (the Canonical Representation
Hypothesis), and a probe that logs it during fine-tuning.

Ziyin, Chuang, Galanti and Poggio, "Formation of Representations in Neural Networks", ICLR 2025
(arXiv 2410.03006). For a layer ``h_b = W h_a`` with input representation ``h_a``, output
``h_b`` and the loss gradients ``g_a = ∂ℓ/∂h_a``, ``g_b = ∂ℓ/∂h_b``, the CRH states that training
drives three matrices on each side of the layer to be proportional:

- input side (the paper's *forward* relations): ``H_a = E[h_a h_aᵀ]``, ``G_a = E[g_a g_aᵀ]`` and
  ``Z_a = WᵀW``;
- output side (*backward*): ``H_b = E[h_b h_bᵀ]``, ``G_b = E[g_b g_bᵀ]`` and ``Z_b = WWᵀ``;

six relations in all (:data:`RELATIONS`): representation-gradient (RG), gradient-weight (GW) and
representation-weight (RW) alignment on each side.

Choices the public text leaves open, and kshot's:

- **The measure.** The alignment of two matrices is the Pearson correlation of their entries
  (:func:`alignment`): 1 for a matrix with itself and for any positive multiple of it, unchanged by
  scaling either side, so it reads "how proportional" the two are whatever their magnitudes.
- **Conv layers.** A conv is the linear map ``W [out, in·kh·kw]`` applied at every position, so
  each position of each image is one sample: ``h_a`` is its unfolded input patch, ``h_b`` and
  ``g_b`` its output channels. Grouped convolutions are refused.
- **The batch.** The expectations are over the support images of the episode (every training
  image, in training mode with BatchNorm frozen, as the training loop sees them), and the gradients
  are those of the cross-entropy of the new head, computed on a separate forward and backward pass
  that leaves the parameters' gradients untouched.
- **Uncentred** second moments, as the hypothesis is stated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from kshot.errors import ConfigError
from kshot.finetune import Tensors, TrainHook, to_input

# relation name -> the two matrices it aligns, of the input side (a) or the output side (b)
RELATIONS: dict[str, tuple[str, str]] = {
    "in: H~G": ("H_a", "G_a"),
    "in: G~WᵀW": ("G_a", "Z_a"),
    "in: H~WᵀW": ("H_a", "Z_a"),
    "out: H~G": ("H_b", "G_b"),
    "out: G~WWᵀ": ("G_b", "Z_b"),
    "out: H~WWᵀ": ("H_b", "Z_b"),
}


def alignment(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the entries of two matrices of one shape; 0 where one is constant."""
    if a.shape != b.shape:
        raise ConfigError(f"b: expected a matrix of shape {list(a.shape)} like a, found {list(b.shape)}")
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    norms = a.norm() * b.norm()
    return float(a @ b / norms) if norms > 0 else 0.0


def _second_moment(x: torch.Tensor) -> torch.Tensor:
    """``E[x xᵀ]`` over the rows of ``x [n, d]``: ``[d, d]``."""
    x = x.double()
    return x.T @ x / len(x)


def _samples(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor):
    """``(h_a [n, d_in], h_b [n, d_out], g_b [n, d_out], W [d_out, d_in])`` of one layer's call,
    one row per sample (per image, or per image and position of a conv)."""
    if isinstance(module, nn.Linear):
        return inp, out, grad_out, module.weight
    if module.groups != 1:
        raise ConfigError(f"layers: expected convolutions with groups=1, found groups={module.groups}")
    patches = F.unfold(
        inp, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
    )  # [B, in·kh·kw, positions]
    rows = lambda t: t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])  # noqa: E731
    return rows(patches), rows(out), rows(grad_out), module.weight.flatten(1)


def layer_alignments(
    model: nn.Module, layers: Sequence[str], support: Tensors, device: torch.device
) -> dict[str, dict[str, float]]:
    """The six alignments of :data:`RELATIONS` for each of ``layers`` (``nn.Linear`` or
    ``nn.Conv2d`` modules of ``model``) on ``support`` (uint8 images ``[N, C, H, W]``, int64 labels
    ``[N]``): ``{layer: {relation: value}}``. The model's mode and gradients are left as they were.
    """
    modules = dict(model.named_modules())
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name] = (args[0], out)

        return hook

    for name in layers:
        if not isinstance(modules.get(name), nn.Linear | nn.Conv2d):
            raise ConfigError(
                f"layers: expected an nn.Linear or nn.Conv2d named '{name}', found {modules.get(name)!r}"
            )
    handles = [modules[name].register_forward_hook(keep(name)) for name in layers]
    try:
        with torch.enable_grad():
            x, y = to_input(support[0], device), support[1].to(device)
            loss = F.cross_entropy(model(x), y)
            outs = [seen[name][1] for name in layers]
            grads = torch.autograd.grad(loss, outs)
    finally:
        for h in handles:
            h.remove()
    result = {}
    with torch.no_grad():
        for name, grad_out in zip(layers, grads, strict=True):
            h_a, h_b, g_b, w = _samples(
                modules[name], seen[name][0].detach(), seen[name][1].detach(), grad_out
            )
            g_a = g_b @ w.detach()
            mats = {
                "H_a": _second_moment(h_a),
                "G_a": _second_moment(g_a),
                "Z_a": w.double().T @ w.double(),
                "H_b": _second_moment(h_b),
                "G_b": _second_moment(g_b),
                "Z_b": w.double() @ w.double().T,
            }
            result[name] = {rel: alignment(mats[a], mats[b]) for rel, (a, b) in RELATIONS.items()}
    return result


class AlignmentProbe(TrainHook):
    """Logs :func:`layer_alignments` on the support images every ``every`` steps of
    :func:`kshot.finetune.train`: the state before the first update (step 0), then after update
    ``s`` for every multiple ``s`` of ``every`` and after the last update (``steps``). It changes
    no gradient and no parameter. ``log``: ``{"steps": [s, ...], "layers": {layer: {relation: [value per
    step]}}}``.
    """

    reads_weights = True  # grouped layers then average gradients in place of a reparametrisation

    def __init__(
        self, layers: Sequence[str], support: Tensors, device: torch.device, every: int, steps: int
    ) -> None:
        if every < 1:
            raise ConfigError(f"--alignment-every: expected an integer >= 1, found {every}")
        self.layers, self.support, self.device = list(layers), support, device
        self.every, self.steps = every, steps  # steps: the run's last update, always logged
        self.log: dict = {"steps": [], "layers": {name: {rel: [] for rel in RELATIONS} for name in layers}}

    def _record(self, model: nn.Module, step: int) -> None:
        self.log["steps"].append(step)
        for name, values in layer_alignments(model, self.layers, self.support, self.device).items():
            for rel, value in values.items():
                self.log["layers"][name][rel].append(value)

    def after_backward(self, model: nn.Module) -> None:
        if not self.log["steps"]:  # the state before the first update
            self._record(model, 0)

    def after_step(self, model: nn.Module, step: int) -> None:
        if step % self.every == 0 or step == self.steps:
            self._record(model, step)
