"""k-shot episodes: seeded support, validation and test indices shared by every method.

An episode of a benchmark with C target classes holds ``k`` support and ``val_per_class``
validation images per class, disjoint, drawn from the target pool (the target's training split),
and test indices into the target test split (all of it by default). Evaluation episodes, the RL
search's episodes (``search``: the rewards) and its selection episodes (``select``: the final pick
among the search's finalists) come from independent seed streams, so the search never sees what is
reported and the final pick is not made on the episodes that ranked the candidates.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kshot.config import EpisodeConfig
from kshot.errors import ConfigError, DataError

ROLES = ("eval", "search", "select")


def episode_seed(seed: int, benchmark: str, k: int, episode: int) -> int:
    """The seed of one episode, the same for every method so that comparisons are paired."""
    return int(zlib.crc32(f"{seed}/{benchmark}/{k}/{episode}".encode()))


def seed_name(ep_file: dict, benchmark: str) -> str:
    """The benchmark name an episodes file's seeds derive from: that of the benchmark whose
    episodes it drew (``drawn_as``, the source-effect study's cells), else ``benchmark``'s, so
    that cells of one target share their episodes' head initialisation and seeds too."""
    return ep_file.get("drawn_as") or benchmark


def role_seed(seed: int, benchmark: str, role: str, k: int, episode: int) -> int:
    """The fine-tuning (and grouping) seed of episode ``episode`` of ``role``: evaluation episodes
    use :func:`episode_seed` of the benchmark, the search's and selection's are namespaced apart."""
    if role not in ROLES:
        raise DataError(f"episode role: expected one of {list(ROLES)}, found {role!r}")
    return episode_seed(seed, benchmark if role == "eval" else f"{benchmark}/{role}", k, episode)


@dataclass(frozen=True)
class Episode:
    """Indices of one k-shot task. ``test`` is ``None`` for the whole test split."""

    id: int
    support: list[int]
    val: list[int]
    test: list[int] | None

    def to_dict(self) -> dict:
        return {"id": self.id, "support": self.support, "val": self.val, "test": self.test}

    @staticmethod
    def from_dict(d: dict) -> Episode:
        return Episode(int(d["id"]), list(d["support"]), list(d["val"]), d.get("test"))


def episode_indices(e: dict[str, Any]) -> list[int]:
    """An episodes-file entry's support and validation rows of the target pool (the rows a
    grouping's unlabeled images are never drawn from)."""
    return [int(i) for i in e["support"]] + [int(i) for i in e.get("val") or []]


def select(x: torch.Tensor, y: torch.Tensor, idx: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of images ``x [N, ...]`` and labels ``y [N]`` (all rows for ``None``)."""
    if idx is None:
        return x, y
    t = torch.as_tensor(idx, dtype=torch.int64)
    return x[t], y[t]


def episode_rng(seed: int, benchmark: str, k: int, role: str, index: int) -> np.random.Generator:
    """An independent generator per (seed, benchmark, k, role, episode)."""
    key = [seed, zlib.crc32(benchmark.encode()), k, zlib.crc32(role.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def check_feasible(pool_labels: torch.Tensor, n_classes: int, k: int, val_per_class: int) -> None:
    """Raise :class:`DataError` when a class has fewer than ``k + val_per_class`` pool images."""
    counts = torch.bincount(pool_labels, minlength=n_classes)
    need = k + val_per_class
    small = int(counts.argmin())
    if int(counts[small]) < need:
        raise DataError(
            f"episodes.k: k={k} plus episodes.val_per_class={val_per_class} needs {need} images "
            f"per class, but target class #{small} has only {int(counts[small])} in the pool"
        )


def sample_episode(
    pool_labels: np.ndarray,
    test_labels: np.ndarray,
    n_classes: int,
    k: int,
    cfg: EpisodeConfig,
    rng: np.random.Generator,
    index: int,
) -> Episode:
    support, val, test = [], [], []
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(pool_labels == c))
        support += idx[:k].tolist()
        val += idx[k : k + cfg.val_per_class].tolist()
        if cfg.test_per_class is not None:
            test += rng.permutation(np.flatnonzero(test_labels == c))[: cfg.test_per_class].tolist()
    return Episode(
        index,
        sorted(support),
        sorted(val),
        sorted(test) if cfg.test_per_class is not None else None,
    )


def check_sizes(
    pool_labels: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    cfg: EpisodeConfig,
    test_field: str = "episodes.test_per_class",
) -> int:
    """Raise unless every class has the ``k`` support and ``val_per_class`` images of an episode in
    the pool and ``test_per_class`` in the test split (``test_field``: where the params set it);
    returns the number of classes. The Snakefile calls it on an existing prepared target while the
    DAG is built."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k: expected an integer number of shots >= 1, found {k!r}")
    n_classes = int(pool_labels.max()) + 1
    check_feasible(pool_labels, n_classes, k, cfg.val_per_class)
    if cfg.test_per_class is not None:
        counts = torch.bincount(test_labels, minlength=n_classes)
        small = int(counts.argmin())
        if int(counts[small]) < cfg.test_per_class:
            raise DataError(
                f"{test_field}: expected at most {int(counts[small])} (target class "
                f"#{small} has only that many test images), found {cfg.test_per_class}"
            )
    return n_classes


def make_episodes(
    pool_labels: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    cfg: EpisodeConfig,
    seed: int,
    benchmark: str,
    draw_as: str | None = None,
    test_field: str = "episodes.test_per_class",
) -> dict:
    """All evaluation and search episodes of one benchmark and k, as a JSON-ready dict; drawn as
    those of benchmark ``draw_as`` where it is given (another source's benchmark of one target);
    ``test_field``: the params field ``cfg.test_per_class`` comes from (:func:`check_sizes`)."""
    n_classes = check_sizes(pool_labels, test_labels, k, cfg, test_field)
    pool, test = pool_labels.numpy(), test_labels.numpy()
    out: dict = {"benchmark": benchmark, "k": k, "seed": seed, "n_classes": n_classes}
    if draw_as is not None:
        out["drawn_as"] = draw_as
    roles = (("eval", cfg.n_episodes), ("search", cfg.search_episodes), ("select", cfg.select_episodes))
    for role, n in roles:
        out[role] = [
            sample_episode(
                pool, test, n_classes, k, cfg, episode_rng(seed, draw_as or benchmark, k, role, i), i
            ).to_dict()
            for i in range(n)
        ]
    return out
