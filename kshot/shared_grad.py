"""Shared gradient: every neuron of a group is updated with its group's mean gradient.

After ``backward()``, for each grouped layer the gradient rows of its weight (dim 0: a conv's output
channels, a linear layer's output units) and the entries of its bias are replaced by the mean over
the neuron's group. A layer with ``G`` groups then has ``G`` degrees of freedom in its update
instead of ``N``; with one neuron per group this is exactly standard fine-tuning.

Design choices:

- **Bias shares the group gradient** (``share_bias=True``): a neuron is its weight row *and* its
  bias, and sharing both keeps the neurons of a group moving as one unit. ``share_bias=False``
  shares the weight rows only.
- **BatchNorm follows its conv's groups.** Where a BatchNorm normalises a grouped conv's output
  (ResNet-18: every conv; :meth:`kshot.models.Backbone.norms`), channel ``c``'s response is
  ``gamma_c (conv_c - mu_c) / sigma_c + beta_c``: the scale belongs to the neuron as its weight row
  does, and the shift is the bias a conv followed by BatchNorm does not have. So ``gamma`` shares
  the group's mean gradient always, and ``beta`` where the bias would (``share_bias``); otherwise a
  group's channels, updated alike in their filters, would still drift apart through their own
  scale and shift, and the group would not move as one. The running statistics stay frozen
  (``kshot.finetune``): they are the source's, and differ between the channels of a group, so
  grouped channels respond alike up to their source normalisation, as their filters did.
- **Loss gradient only.** The hook runs between ``backward()`` and the optimiser step, so it
  averages the gradient of the loss (plus any penalty). Weight decay, which the optimiser
  (:class:`kshot.optim.SGD`) adds inside ``step()``, stays per neuron; momentum accumulates the
  shared gradients, so with zero weight decay the neurons of a group receive identical updates at
  every step.
- **Vectorised.** Per parameter: one ``index_add_`` of the ``[N, D]`` gradient rows into a reused
  ``[G, D]`` buffer of group sums, one in-place scale by the precomputed ``1 / |group|``, one
  ``index_select`` written straight back into the gradient (a channels_last conv gradient in place
  too: each output channel's entries are one contiguous block). Assignments and inverse counts are
  moved to the device once, and layers whose grouping is one neuron per group are skipped (no
  work, bitwise identical).
- **Group deltas for coarse linear layers.** Under momentum SGD without weight decay (the
  fine-tuning default), averaging the gradient of a layer's weight ``W`` is the same update as
  training ``W = W0 + S V[assign]`` through one delta row ``V[g]`` per group, with
  ``S = diag(1/sqrt|group(i)|)``: the gradient of ``V`` is ``S`` times the group sums, and the update
  it makes to ``W`` is ``-lr`` times the group mean, with momentum as well. For an ``nn.Linear`` with
  at most ``DELTA_MAX_FRACTION`` groups per neuron that is less work than averaging: the ``[N, D]``
  weight gradient and its optimiser state are never formed, only their ``[G, D]`` group versions,
  for one extra ``[B, G]`` matmul in the forward pass. Up to half of the neurons as groups (the
  search menu's coarsest fraction below one neuron per group, rounded up): the deltas' extra
  matmuls grow with the batch and averaging does not, so they win at small k and lose a little at
  k=10.
  :meth:`GroupedGradient.attach` swaps such layers for :class:`GroupDeltaLinear` (its
  :meth:`~GroupedGradient.prepare` does it when ``kshot.finetune.train`` says the update is linear),
  :meth:`GroupedGradient.detach` folds the deltas back into the layer's own tensors.
  The results equal the averaged gradient's up to float rounding (a test); ``benchmarks/`` measures
  both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import ConfigError
from kshot.finetune import TrainHook
from kshot.grouping import check_assignment
from kshot.models import Backbone


def group_mean_rows_(
    rows: torch.Tensor,
    assign: torch.Tensor,
    inv_counts: torch.Tensor,
    n_groups: int,
    sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace each row of ``rows [N, D]`` in place by the mean of the rows of its group.

    ``assign [N]`` maps rows to groups ``0..n_groups-1``; ``inv_counts [n_groups, 1]`` holds
    ``1 / |group|`` (0 for a label no row uses, as the population's offset labels have); ``sums``:
    an optional ``[n_groups, D]`` scratch buffer to reuse. Returns ``rows``.
    """
    if sums is None:
        sums = torch.zeros(n_groups, rows.shape[1], dtype=rows.dtype, device=rows.device)
    else:
        sums.zero_()
    sums.index_add_(0, assign, rows).mul_(inv_counts)
    if rows.is_contiguous():
        torch.index_select(sums, 0, assign, out=rows)
    else:
        rows.copy_(sums.index_select(0, assign))
    return rows


def neuron_parameters(model: nn.Module, layer: str, share_bias: bool = True) -> list[str]:
    """Names of the parameters of ``model`` whose rows are ``layer``'s neurons, shared by group:
    its weight, its bias (``share_bias``) and, where a BatchNorm normalises its output
    (:meth:`kshot.models.Backbone.norms`), that norm's scale and (``share_bias``) its shift."""
    m = model.get_submodule(layer)
    names = [f"{layer}.weight"] + ([f"{layer}.bias"] if share_bias and m.bias is not None else [])
    norm = model.norms().get(layer) if isinstance(model, Backbone) else None
    if norm is not None:
        bn = model.get_submodule(norm)
        if bn.weight is not None:
            names.append(f"{norm}.weight")
        if share_bias and bn.bias is not None:
            names.append(f"{norm}.bias")
    return names


def inverse_counts(assign: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``assign [N]`` -> ``[n_groups, 1]`` with ``1 / |group|`` (0 where a group is empty)."""
    counts = torch.bincount(assign, minlength=n_groups).to(torch.float32)
    return torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))[:, None]


def _rows_in_place(g: torch.Tensor) -> bool:
    """Whether ``g``'s ``[N, D]`` rows lie in its storage as ``N`` blocks of ``D`` values at a
    stride of ``D``: a contiguous gradient, or a channels_last conv gradient (each output channel's
    entries in one contiguous block, in another order, the same for every row)."""
    return g.is_contiguous() or (g.dim() == 4 and g.is_contiguous(memory_format=torch.channels_last))


@dataclass
class _Rows:
    """One parameter whose gradient rows are averaged by group."""

    param: nn.Parameter
    assign: torch.Tensor  # [N] on the parameter's device
    inv_counts: torch.Tensor  # [G, 1], same device and dtype as the parameter
    n_groups: int
    sums: torch.Tensor = field(init=False)  # [G, D] scratch for the group sums

    def __post_init__(self) -> None:
        p = self.param
        self.sums = p.new_zeros(self.n_groups, p.numel() // len(self.assign), requires_grad=False)

    def rows(self) -> torch.Tensor | None:
        """The gradient as ``[N, D]`` rows in its own storage (``None`` without a gradient); a
        layout whose rows are not in place (:func:`_rows_in_place`) is made contiguous first."""
        g = self.param.grad
        if g is None:
            return None
        n = len(self.assign)
        if not _rows_in_place(g):
            g = self.param.grad = g.contiguous()
        if g.is_contiguous():
            return g.view(n, -1)
        return g.permute(0, 2, 3, 1).view(n, -1)  # channels_last

    def apply(self) -> None:
        rows = self.rows()
        if rows is not None:
            group_mean_rows_(rows, self.assign, self.inv_counts, self.n_groups, self.sums)


DELTA_MAX_FRACTION = 0.5  # a Linear with at most this many groups per neuron trains through deltas


class GroupDeltaLinear(nn.Module):
    """An ``nn.Linear`` fine-tuned through one delta row per group of its output neurons.

    ``weight = w0 + scale[:, None] * delta[assign]`` (and the bias likewise when it is shared), where
    ``w0`` is the layer's weight when it was swapped in (a buffer sharing the layer's storage) and
    ``scale = 1/sqrt|group|`` per neuron. The weight is never formed: the output is
    ``x w0^T + b + scale * (x delta^T + delta_bias)[:, assign]``, so the backward pass computes a
    ``[G, D]`` gradient instead of ``[N, D]``. ``share_bias=False`` keeps the layer's own bias as a
    parameter (with its own gradient, or frozen). Only the deltas are saved in a state dict.
    """

    def __init__(self, base: nn.Linear, assign: torch.Tensor, n_groups: int, share_bias: bool):
        super().__init__()
        w = base.weight
        inv = inverse_counts(assign.cpu(), n_groups)[:, 0]
        # not persistent: a saved state holds the deltas alone (w0 never changes during a run)
        self.register_buffer("assign", assign.to(w.device), persistent=False)
        self.register_buffer("scale", inv.sqrt()[assign.cpu()].to(w.device, w.dtype), persistent=False)
        self.register_buffer("w0", w.detach(), persistent=False)
        self.delta = nn.Parameter(w.new_zeros(n_groups, w.shape[1]))
        shared = base.bias is not None and share_bias
        self.register_buffer("b0", base.bias.detach() if shared else None, persistent=False)
        self.delta_bias = nn.Parameter(w.new_zeros(n_groups)) if shared else None
        self.bias = base.bias if base.bias is not None and not share_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.w0, self.b0 if self.bias is None else self.bias)
        z = F.linear(x, self.delta, self.delta_bias)  # [..., G]
        return torch.addcmul(out, z.index_select(-1, self.assign), self.scale)

    @torch.no_grad()
    def fold_into(self, base: nn.Linear) -> None:
        """Add the deltas to ``base``'s weight (and shared bias), in place."""
        base.weight.addcmul_(self.delta.index_select(0, self.assign), self.scale[:, None])
        if self.delta_bias is not None:
            base.bias.addcmul_(self.delta_bias.index_select(0, self.assign), self.scale)


@dataclass
class _Layer:
    """One grouped layer: its module, grouping and the gradient-averaging parts of its parameters."""

    module: nn.Conv2d | nn.Linear
    assign: torch.Tensor
    n_groups: int
    parts: list[_Rows]


class GroupedGradient(TrainHook):
    """A :class:`~kshot.finetune.TrainHook` that shares gradients within groups.

    ``assignments`` maps a layer name (an ``nn.Conv2d`` or ``nn.Linear`` of ``model``) to its
    grouping ``assign [N_out]``. The hook is bound to ``model``'s parameter tensors: call it with
    the same model (``train`` updates parameters in place, so they stay the same tensors).

    Between :meth:`attach` and :meth:`detach`, coarsely grouped linear layers train through their
    group deltas instead (:class:`GroupDeltaLinear`) and the hook leaves them alone.
    """

    def __init__(
        self,
        model: nn.Module,
        assignments: dict[str, torch.Tensor],
        share_bias: bool = True,
    ) -> None:
        self.model = model
        self.share_bias = share_bias
        modules = dict(model.named_modules())
        self.groups: dict[str, int] = {}
        self._layers: dict[str, _Layer] = {}
        for name, assign in assignments.items():
            m = modules.get(name)
            if not isinstance(m, nn.Conv2d | nn.Linear):
                valid = [n for n, x in modules.items() if isinstance(x, nn.Conv2d | nn.Linear)]
                raise ConfigError(
                    f"assignments: layer '{name}' must name an nn.Conv2d or nn.Linear of the "
                    f"model ({valid}), found {type(m).__name__ if m is not None else 'nothing'}"
                )
            n = m.weight.shape[0]
            g = check_assignment(assign.cpu(), n, f"assignments.{name}")
            if g == n:
                continue  # one neuron per group: the mean is the gradient itself
            self.groups[name] = g
            inv = inverse_counts(assign.cpu(), g)  # [G, 1]
            params = [model.get_parameter(p) for p in neuron_parameters(model, name, share_bias)]
            parts = [
                _Rows(param=p, assign=assign.to(p.device), inv_counts=inv.to(p.device, p.dtype), n_groups=g)
                for p in params
            ]
            self._layers[name] = _Layer(m, assign, g, parts)
        self._deltas: dict[str, GroupDeltaLinear] = {}
        self._parts = self._rows()

    def __call__(self, model: nn.Module) -> None:
        if model is not self.model:
            raise ValueError("GroupedGradient: called with another model than it was built for")
        for part in self._parts:
            part.apply()

    def prepare(self, trainable: list[torch.Tensor], linear_update: bool) -> list[torch.Tensor]:
        return self.attach(trainable) if linear_update else trainable

    def after_backward(self, model: nn.Module) -> None:
        self(model)

    def finish(self, model: nn.Module) -> None:
        self.detach()

    def averaged(self) -> list[nn.Parameter]:
        """The parameters whose gradients the hook averages now (not those trained through deltas)."""
        return [part.param for part in self._rows()]

    def counts(self) -> dict[str, int]:
        """Groups per layer actually shared (layers with one neuron per group are omitted)."""
        return dict(self.groups)

    def attach(self, trainable: list[torch.Tensor]) -> list[torch.Tensor]:
        """Swap every grouped ``nn.Linear`` with at most ``DELTA_MAX_FRACTION`` groups per neuron,
        whose weight is in ``trainable``, for a :class:`GroupDeltaLinear`; return ``trainable`` with
        that layer's weight (and shared bias) replaced by its deltas.

        Only valid for an optimiser whose update is linear in the gradient and blind to the weights
        (momentum SGD without weight decay, no penalty on the weights): the caller decides.
        """
        if self._deltas:
            raise RuntimeError("GroupedGradient.attach: already attached; detach first")
        wanted = {id(p) for p in trainable}
        swapped: set[int] = set()
        added: list[torch.Tensor] = []
        for name, layer in self._layers.items():
            m = layer.module
            if not isinstance(m, nn.Linear) or id(m.weight) not in wanted:
                continue
            if layer.n_groups > math.ceil(DELTA_MAX_FRACTION * m.weight.shape[0]):  # as counts round
                continue
            # a frozen bias stays the layer's own (frozen) parameter
            share_bias = self.share_bias and m.bias is not None and id(m.bias) in wanted
            delta = GroupDeltaLinear(m, layer.assign, layer.n_groups, share_bias)
            self._swap(name, delta)
            self._deltas[name] = delta
            swapped.add(id(m.weight))
            added.append(delta.delta)
            if delta.delta_bias is not None:
                swapped.add(id(m.bias))
                added.append(delta.delta_bias)
        self._parts = self._rows()
        return [p for p in trainable if id(p) not in swapped] + added

    def detach(self) -> None:
        """Fold the deltas into the layers' own tensors and put the layers back (idempotent)."""
        for name, delta in self._deltas.items():
            base = self._layers[name].module
            delta.fold_into(base)
            self._swap(name, base)
        self._deltas = {}
        self._parts = self._rows()

    def _rows(self) -> list[_Rows]:
        """The averaging parts of every grouped layer not trained through deltas."""
        return [
            part for name, layer in self._layers.items() if name not in self._deltas for part in layer.parts
        ]

    def _swap(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, module)
