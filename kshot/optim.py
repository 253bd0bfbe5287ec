"""Momentum SGD for fine-tuning and Adam for the search's controller: ``torch.optim``'s updates,
without ``torch.optim``'s start-up.

Constructing a ``torch.optim`` optimiser imports ``torch._dynamo`` (its methods are wrapped to opt
out of compilation), which costs every fine-tuning process a second or two on CPU, dozens of times
per pipeline run (``benchmarks/README.md`` has the measurement). Fine-tuning needs one update
rule, so it is written here with the same ops in the same order as ``torch.optim.SGD``
(``dampening=0``, no Nesterov): on CPU the parameters end bit for bit the same (a test checks it against
``torch.optim.SGD``; on CUDA that takes its multi-tensor path, equal up to float rounding).
Pre-training keeps ``torch.optim.SGD`` (one job, and its learning-rate schedule needs it).
The search's LSTM controller is trained with Adam, written here the same way (``torch.optim.Adam``'s
single-tensor update, its default for CPU tensors), which saves each RL search job the same import.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def sgd_direction(
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    buffers: list[torch.Tensor] | None,
    momentum: float,
    weight_decay: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The step direction of momentum SGD (the update is ``-lr`` times it) and the new momentum
    buffers (``None`` before the first step; updated in place after it).

    ``grads``, ``params`` and ``buffers``: lists of the same length, ``grads[i]`` and ``buffers[i]``
    shaped like ``params[i]``; the direction is a list of the same shapes.

    Weight decay is added to the gradient, ``g + wd * p``; the buffer starts as a copy of the first
    direction and then is ``momentum * buf + g``, as ``torch.optim.SGD`` does.
    """
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum == 0:
        return grads, buffers
    if buffers is None:
        buffers = [g.detach().clone() for g in grads]
    else:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads)
    return buffers, buffers


class SGD:
    """Momentum SGD over ``params``, updated in place: ``zero_grad()``, then ``step()`` after
    ``backward()``. Every parameter must have a gradient at each step (fine-tuning's full-batch
    steps give one to every trainable tensor); a missing one is an error, not a silent skip."""

    def __init__(
        self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self._buffers: list[torch.Tensor] | None = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise RuntimeError(
                f"SGD.step: parameters {missing} have no gradient: backward() did not reach them "
                "(not used in the forward pass, or requires_grad=False); pass only trainable tensors"
            )
        direction, self._buffers = sgd_direction(
            grads, self.params, self._buffers, self.momentum, self.weight_decay
        )
        torch._foreach_add_(self.params, direction, alpha=-self.lr)


class Adam:
    """Adam over ``params`` (no weight decay, no AMSGrad), updated in place: ``torch.optim.Adam``'s
    single-tensor update with the same ops in the same order, so on CPU the parameters end bit for
    bit the same (a test checks it). As there, a parameter without a gradient at a step is skipped
    (the controller's last embedding never feeds a later step)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        # per parameter index: (step count as a float32 scalar tensor, first moment, second moment)
        self._state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if i not in self._state:
                zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
                self._state[i] = (torch.tensor(0.0), zeros, zeros.clone())
            step_t, exp_avg, exp_avg_sq = self._state[i]
            step_t += 1
            exp_avg.lerp_(grad, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            step = step_t.item()
            step_size = self.lr / (1 - self.beta1**step)
            bias_correction2_sqrt = (1 - self.beta2**step) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
