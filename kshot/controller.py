"""The search controller: an LSTM policy over per-layer group counts, trained with REINFORCE.

As in Zoph & Le's neural architecture search, an LSTM emits one decision per step, here one per
groupable layer in forward order: the index of a group count in that layer's *menu* (the allowed
counts, e.g. the fractions 1/16, 1/8, 1/4, 1/2, 1 of its neurons). The input of step ``l`` is an
embedding of the action taken at step ``l-1`` (a learned start vector at step 0), so later layers
are chosen knowing the earlier choices; each layer has its own linear head over its own menu.

Training (:class:`Reinforce`) maximises the expected reward (validation accuracy) with the
likelihood-ratio gradient ``(R - b) * grad log pi(a)`` plus an entropy bonus. Design choices:

- **Baseline**: an exponential moving average of past rewards, ``b <- d*b + (1-d)*R``, set to the
  first reward on the first update (so the first sample is neither rewarded nor punished for the
  scale of accuracies, which it could not know). The advantage uses ``b`` *before* it absorbs ``R``.
- **Entropy bonus** (``entropy_weight``): a small budget of evaluations makes an early collapse
  onto one configuration likely; the bonus keeps the policy exploring.
- **Adam** with a comparatively large learning rate: the search affords tens of samples, not the
  tens of thousands of NAS, so the policy must move within that budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kshot.config import ControllerConfig
from kshot.errors import ConfigError
from kshot.optim import Adam


@dataclass
class Sample:
    """One sampled configuration: ``actions[l]`` indexes layer ``l``'s menu. ``log_prob`` and
    ``entropy`` are scalar tensors (sums over layers) that carry the policy's graph."""

    actions: list[int]
    log_prob: torch.Tensor
    entropy: torch.Tensor


class GroupCountPolicy(nn.Module):
    """LSTM policy emitting one menu index per layer; ``menu_sizes[l]`` choices at step ``l``."""

    def __init__(self, menu_sizes: list[int], hidden: int = 32, embed: int = 16) -> None:
        super().__init__()
        if not menu_sizes or min(menu_sizes) < 1:
            raise ConfigError(f"menu: expected at least one choice per layer, found {menu_sizes}")
        self.menu_sizes = list(menu_sizes)
        self.start = nn.Parameter(torch.zeros(embed))
        self.cell = nn.LSTMCell(embed, hidden)
        self.embeds = nn.ModuleList(nn.Embedding(n, embed) for n in menu_sizes)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in menu_sizes)

    def _run(
        self, generator: torch.Generator | None, forced: list[int] | None, greedy: bool = False
    ) -> Sample:
        x = self.start[None]  # [1, embed]
        state = None
        actions: list[int] = []
        log_prob = torch.zeros(())
        entropy = torch.zeros(())
        for layer, head in enumerate(self.heads):
            state = self.cell(x, state)  # (h [1, hidden], c [1, hidden])
            logp = torch.log_softmax(head(state[0])[0], dim=0)  # [menu_l]
            if forced is not None:
                a = forced[layer]
            elif greedy:
                a = int(logp.argmax())
            else:
                a = int(torch.multinomial(logp.exp(), 1, generator=generator))
            actions.append(a)
            log_prob = log_prob + logp[a]
            entropy = entropy - (logp.exp() * logp).sum()
            x = self.embeds[layer](torch.tensor([a]))  # [1, embed]
        return Sample(actions, log_prob, entropy)

    def sample(self, generator: torch.Generator) -> Sample:
        """Draw one action per layer from the policy using ``generator``."""
        return self._run(generator, None)

    def evaluate(self, actions: list[int]) -> Sample:
        """Log-probability and entropy of given ``actions`` (with the graph, for an update)."""
        if len(actions) != len(self.menu_sizes):
            raise ValueError(f"expected {len(self.menu_sizes)} actions, found {len(actions)}")
        return self._run(None, actions)

    @torch.no_grad()
    def greedy(self) -> list[int]:
        """The most likely action at each step (each conditioned on the previous greedy ones)."""
        return self._run(None, None, greedy=True).actions


class Reinforce:
    """A seeded policy, its optimiser and its moving-average baseline."""

    def __init__(self, menu_sizes: list[int], cfg: ControllerConfig, seed: int) -> None:
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = GroupCountPolicy(menu_sizes, cfg.hidden, cfg.embed)
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = Adam(self.policy.parameters(), lr=cfg.lr)
        self.baseline: float | None = None

    def sample(self) -> Sample:
        return self.policy.sample(self.generator)

    def update(self, sample: Sample, reward: float) -> dict[str, float]:
        """One REINFORCE step on ``sample`` with ``reward``. Returns the loss, the advantage and the
        baseline the advantage was measured against."""
        baseline = reward if self.baseline is None else self.baseline
        advantage = reward - baseline
        loss = -advantage * sample.log_prob - self.cfg.entropy_weight * sample.entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        d = self.cfg.baseline_decay
        self.baseline = d * baseline + (1 - d) * reward
        return {"loss": float(loss.detach()), "advantage": advantage, "baseline": baseline}
