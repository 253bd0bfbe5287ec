"""Population fine-tuning: ``P`` fine-tuning runs of one architecture as one batched computation.

The RL search fine-tunes many small models (each configuration on each search episode), and each run
is tiny (a support set of 5 to 50 images): one run leaves a GPU, and most of a CPU's vector units,
idle and pays Python and dispatch overhead per step. Here the ``P`` members' parameters are stacked
(``[P, ...]`` per tensor) and one step of all of them is one call of
``vmap(grad_and_value(loss))`` over :func:`torch.func.functional_call`. Members may differ in their
data (episodes: support and validation sets of equal sizes), their initial weights (e.g. heads), and
their groupings (any counts per layer); they share the architecture and the :class:`FinetuneConfig`.

The semantics are those of :func:`kshot.finetune.train`, step for step: full-batch cross-entropy,
the group-mean gradient after the backward pass, momentum SGD with weight decay (the direction of
:func:`kshot.optim.sgd_direction`, applied functionally: ``w - lr*buf``), BatchNorm in eval mode,
validation every ``eval_every`` steps and at the last, the best state kept (later steps win ties),
a member with a non-finite loss stopped at that step. Results agree with the sequential loop to
float tolerance (batched kernels sum in another order).

The batched group mean: for a layer of ``N`` neurons, member ``p``'s assignment is offset by
``p*N`` so that the ``[P, N, ...]`` gradient viewed as ``[P*N, D]`` rows is averaged by one
``index_add_`` into ``P*N`` group slots (members without a grouping for that layer get one neuron
per group): no loop over members or neurons.

On CPU, where the batched population was measured slower than the loop, :func:`train_members` runs
the members' own loops instead, one after another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError, DataError
from kshot.finetune import Tensors, TrainResult, freeze_batchnorm, to_input, train
from kshot.grouping import check_assignment
from kshot.optim import sgd_direction
from kshot.shared_grad import GroupedGradient, group_mean_rows_, inverse_counts, neuron_parameters


@dataclass
class PopulationResult:
    """Validation-selected states of the ``P`` members and their per-member curves."""

    params: dict[str, torch.Tensor]  # name -> [P, ...]
    buffers: dict[str, torch.Tensor]  # name -> [P, ...]
    val_acc: list[float]
    best_step: list[int]
    steps_run: list[int]
    diverged_step: list[int | None]
    val_curves: list[list[list[float]]] = field(default_factory=list)
    loss_curves: list[list[list[float]]] = field(default_factory=list)
    train_time_s: float = 0.0

    def load_into(self, model: nn.Module, p: int) -> nn.Module:
        """Copy member ``p``'s selected state into ``model`` (same architecture); returns it."""
        state = {n: t[p] for n, t in {**self.params, **self.buffers}.items()}
        model.load_state_dict(state, strict=False)
        return model


def _stack(members: list[nn.Module], device: torch.device) -> tuple[dict, dict]:
    shapes = [{n: tuple(t.shape) for n, t in m.state_dict().items()} for m in members]
    for p, s in enumerate(shapes[1:], start=1):
        if s != shapes[0]:
            diff = sorted(n for n in s.keys() | shapes[0].keys() if s.get(n) != shapes[0].get(n))
            raise DataError(f"members[{p}]: expected the architecture of members[0], differs at {diff}")
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in members]).to(device)
        for n, _ in members[0].named_parameters()
    }
    buffers = {
        n: torch.stack([dict(m.named_buffers())[n] for m in members]).to(device)
        for n, _ in members[0].named_buffers()
    }
    return params, buffers


def _stack_data(data: list[Tensors], what: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    sizes = {tuple(x.shape) for x, _ in data}
    if len(sizes) != 1:
        raise DataError(
            f"{what}: expected the same number and shape of images in every member, "
            f"found shapes {sorted(sizes)}"
        )
    x = torch.stack([to_input(x, device) for x, _ in data])  # [P, B, C, H, W]
    y = torch.stack([y for _, y in data]).to(device)  # [P, B]
    return x, y


@dataclass
class _BatchedLayer:
    names: list[str]  # parameter names sharing the grouping (weight, bias)
    assign: torch.Tensor  # [P*N], member p's groups offset by p*N
    inv_counts: torch.Tensor  # [P*N, 1]
    slots: int  # P*N


def _batched_groupings(
    base: nn.Module,
    groupings: list[dict[str, torch.Tensor] | None],
    share_bias: bool,
    device: torch.device,
) -> list[_BatchedLayer]:
    layers = sorted({name for g in groupings if g for name in g})
    out = []
    for name in layers:
        m = base.get_submodule(name)
        n = m.weight.shape[0]
        parts, grouped = [], False
        for p, g in enumerate(groupings):
            if g and name in g:
                groups = check_assignment(g[name].cpu(), n, f"groupings[{p}].{name}")
                grouped |= groups < n
                parts.append(g[name].cpu() + p * n)
            else:
                parts.append(torch.arange(n) + p * n)
        if not grouped:
            continue  # one neuron per group everywhere: the mean is the gradient itself
        assign = torch.cat(parts)
        names = neuron_parameters(base, name, share_bias)
        out.append(
            _BatchedLayer(
                names=names,
                assign=assign.to(device),
                inv_counts=inverse_counts(assign, len(assign)).to(device, m.weight.dtype),
                slots=len(assign),
            )
        )
    return out


def train_population(
    members: list[nn.Module],
    supports: list[Tensors],
    vals: list[Tensors],
    cfg: FinetuneConfig,
    device: torch.device,
    groupings: list[dict[str, torch.Tensor] | None] | None = None,
    share_bias: bool = True,
) -> PopulationResult:
    """Fine-tune every parameter of ``P = len(members)`` models at once; return selected states.

    ``members``: modules of one architecture (their heads already initialised; they are not
    modified); ``supports[p]``, ``vals[p]``: ``(uint8 [B, C, H, W], int64 [B])`` with ``B`` equal
    across members; ``groupings[p]``: ``{layer: assign [N]}`` or ``None`` (plain fine-tuning).
    """
    start = time.perf_counter()
    n_members = len(members)
    if n_members == 0 or len(supports) != n_members or len(vals) != n_members:
        raise DataError(
            f"members: expected P >= 1 members with P supports and P validation sets, "
            f"found {n_members}, {len(supports)}, {len(vals)}"
        )
    if cfg.triplet_weight > 0:  # the batched step computes cross-entropy alone
        raise ConfigError(
            f"triplet_weight: expected 0 for a batched population (the hybrid loss trains one "
            f"model at a time), found {cfg.triplet_weight}"
        )
    groupings = groupings if groupings is not None else [None] * n_members
    if len(groupings) != n_members:
        raise DataError(f"groupings: expected {n_members} entries, found {len(groupings)}")
    base = members[0]
    params, buffers = _stack(members, device)
    x, y = _stack_data(supports, "supports", device)
    xv, yv = _stack_data(vals, "vals", device)
    shared = _batched_groupings(base, groupings, share_bias, device)
    names = list(params)

    was_training = base.training

    def loss_fn(p: dict, b: dict, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, (p, b), (xs,)), ys)

    def logits_fn(p: dict, b: dict, xs: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (xs,))

    step_fn = vmap(grad_and_value(loss_fn))
    eval_fn = vmap(logits_fn)

    def val_accuracy(state: dict[str, torch.Tensor]) -> torch.Tensor:  # [P]
        base.eval()
        with torch.no_grad():
            acc = (eval_fn(state, buffers, xv).argmax(-1) == yv).float().mean(1)
        base.train()
        freeze_batchnorm(base)
        return acc.cpu()

    best = {n: t.clone() for n, t in params.items()}
    best_acc = torch.full((n_members,), -1.0)
    best_step = [0] * n_members
    alive = torch.ones(n_members, dtype=torch.bool)
    result = PopulationResult(
        params=best,
        buffers=buffers,
        val_acc=[0.0] * n_members,
        best_step=best_step,
        steps_run=[0] * n_members,
        diverged_step=[None] * n_members,
        val_curves=[[] for _ in range(n_members)],
        loss_curves=[[] for _ in range(n_members)],
    )
    momentum_buf: list[torch.Tensor] | None = None
    base.train()
    freeze_batchnorm(base)
    try:
        for step in range(1, cfg.steps + 1):
            grads, loss = step_fn(params, buffers, x, y)
            losses = loss.detach().cpu()
            newly_dead = alive & ~torch.isfinite(losses)
            for p in newly_dead.nonzero().flatten().tolist():
                result.diverged_step[p] = step
            alive &= ~newly_dead
            if not bool(alive.any()):
                break
            for layer in shared:
                for name in layer.names:
                    g = grads[name].contiguous()
                    group_mean_rows_(g.view(layer.slots, -1), layer.assign, layer.inv_counts, layer.slots)
                    grads[name] = g
            d = [grads[n] for n in names]
            w = [params[n] for n in names]
            d, momentum_buf = sgd_direction(d, w, momentum_buf, cfg.momentum, cfg.weight_decay)
            new = torch._foreach_add(w, d, alpha=-cfg.lr)
            if not bool(alive.all()):  # frozen members keep their last finite state
                keep = alive.to(device)
                new = [
                    torch.where(keep.view(-1, *[1] * (t.dim() - 1)), t, o)
                    for t, o in zip(new, w, strict=True)
                ]
            params = dict(zip(names, new, strict=True))
            for p in alive.nonzero().flatten().tolist():
                result.steps_run[p] = step
            if step % cfg.eval_every == 0 or step == cfg.steps:
                acc = val_accuracy(params)
                improved = alive & (acc >= best_acc)
                for p in alive.nonzero().flatten().tolist():
                    result.loss_curves[p].append([step, float(losses[p])])
                    result.val_curves[p].append([step, float(acc[p])])
                    if improved[p]:
                        best_acc[p], best_step[p] = acc[p], step
                sel = improved.to(device)
                for n in names:
                    best[n] = torch.where(sel.view(-1, *[1] * (best[n].dim() - 1)), params[n], best[n])
        never = best_acc < 0  # diverged before any evaluation: its last finite state stands
        if bool(never.any()):
            sel = never.to(device)
            for n in names:
                best[n] = torch.where(sel.view(-1, *[1] * (best[n].dim() - 1)), params[n], best[n])
            best_acc = torch.where(never, val_accuracy(best), best_acc)
    finally:
        base.train(was_training)
    result.val_acc = [float(a) for a in best_acc]
    result.train_time_s = time.perf_counter() - start
    return result


def train_members(
    members: list[nn.Module],
    supports: list[Tensors],
    vals: list[Tensors],
    cfg: FinetuneConfig,
    device: torch.device,
    groupings: list[dict[str, torch.Tensor] | None],
    seeds: list[int],
    share_bias: bool = True,
) -> list[TrainResult]:
    """Grouped fine-tuning of each member, one after another (:func:`kshot.finetune.train` with
    its grouping's :class:`GroupedGradient`), member ``i`` under torch seed ``seeds[i]``."""
    out = []
    for member, support, val, assign, seed in zip(members, supports, vals, groupings, seeds, strict=True):
        hook = GroupedGradient(member, assign or {}, share_bias=share_bias)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out.append(train(member, list(member.parameters()), support, val, cfg, device, hooks=[hook]))
    return out
