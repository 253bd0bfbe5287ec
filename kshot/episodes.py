"""k-shot episodes: seeded support, validation and test indices shared by every method.

An episode of a benchmark with C target classes holds ``k`` support and ``val_per_class``
validation images per class, disjoint, drawn from the target pool (the target's training split),
and test indices into the target test split (all of it by default). Evaluation episodes, the RL
search's episodes (``search``: the rewards) and its selection episodes (``select``: the final pick
among the search's finalists) come from independent seed streams, so the search never sees what is
reported and the final pick is not made on the episodes that ranked the candidates.
"""

from __future__ import annotations

import os
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


def _index_list(value: Any, bound: int) -> bool:
    """Whether ``value`` is a list of integer indices in ``[0, bound)``."""
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < bound for i in value
    )


def read_episodes(
    path: str | os.PathLike[str], benchmark: str, k: int | None, meta: dict[str, Any]
) -> dict[str, Any]:
    """Read an episodes file and check it against what it is used with: the episodes of
    ``benchmark`` and ``k`` (any k for ``None``), drawn from the prepared target whose ``meta`` is
    given (its class count, pool and test sizes). Raises :class:`DataError` naming the file, what
    was expected and what was found, e.g. for another benchmark's episodes or indices beyond the
    target's images."""
    from kshot.io import read_json

    content = read_json(path, what="episodes file")
    where = f"episodes file '{path}'"
    if not isinstance(content, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(content).__name__}")
    if content.get("benchmark") != benchmark:
        raise DataError(
            f"{where}: expected the episodes of benchmark '{benchmark}', found those of "
            f"{content.get('benchmark')!r}"
        )
    if k is not None and content.get("k") != k:
        raise DataError(f"{where}: expected episodes for k={k}, found k={content.get('k')!r}")
    n_classes = len(meta["classes"])
    if content.get("n_classes") != n_classes:
        raise DataError(
            f"{where}: expected n_classes={n_classes} (the target's classes {meta['classes']}), "
            f"found {content.get('n_classes')!r}"
        )
    bounds = {"support": meta["n_pool"], "val": meta["n_pool"], "test": meta["n_test"]}
    for role in ROLES:
        entries = content.get(role, [])
        if not isinstance(entries, list):
            raise DataError(f"{where}: expected a list of '{role}' episodes, found {type(entries).__name__}")
        for i, entry in enumerate(entries):
            bad = [
                key
                for key, bound in bounds.items()
                if not isinstance(entry, dict)
                or not (_index_list(entry.get(key), bound) or (key == "test" and entry.get(key) is None))
            ]
            if not bad and not (isinstance(entry.get("id"), int) and not isinstance(entry["id"], bool)):
                bad = ["id"]
            if bad:
                raise DataError(
                    f"{where}: '{role}' episode #{i}: expected an integer 'id' and lists of image "
                    f"indices 'support' and 'val' in [0, {meta['n_pool']}) and 'test' in "
                    f"[0, {meta['n_test']}) (or null), found a bad '{bad[0]}'"
                )
    return content


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


def make_episodes(
    pool_labels: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    cfg: EpisodeConfig,
    seed: int,
    benchmark: str,
) -> dict:
    """All evaluation and search episodes of one benchmark and k, as a JSON-ready dict."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k: expected an integer number of shots >= 1, found {k!r}")
    n_classes = int(pool_labels.max()) + 1
    check_feasible(pool_labels, n_classes, k, cfg.val_per_class)
    if cfg.test_per_class is not None:
        counts = torch.bincount(test_labels, minlength=n_classes)
        small = int(counts.argmin())
        if int(counts[small]) < cfg.test_per_class:
            raise DataError(
                f"episodes.test_per_class: expected at most {int(counts[small])} (target class "
                f"#{small} has only that many test images), found {cfg.test_per_class}"
            )
    pool, test = pool_labels.numpy(), test_labels.numpy()
    out: dict = {"benchmark": benchmark, "k": k, "seed": seed, "n_classes": n_classes}
    roles = (("eval", cfg.n_episodes), ("search", cfg.search_episodes), ("select", cfg.select_episodes))
    for role, n in roles:
        out[role] = [
            sample_episode(
                pool, test, n_classes, k, cfg, episode_rng(seed, benchmark, k, role, i), i
            ).to_dict()
            for i in range(n)
        ]
    return out
