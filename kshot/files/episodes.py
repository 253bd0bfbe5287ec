"""The episodes file of a benchmark at one k (:func:`kshot.episodes.make_episodes`).

A JSON object: ``benchmark``, ``k``, ``n_classes`` and one list per role of
:data:`kshot.episodes.ROLES` (``eval``, ``search``, ``select``) of entries ``{id, support, val,
test}`` (indices into the prepared target's pool, and into its test split or ``null`` for all of it).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from kshot.episodes import ROLES
from kshot.errors import DataError
from kshot.io import read_json, write_json


def write_episodes(path: str | os.PathLike[str], content: dict[str, Any]) -> None:
    """Write an episodes file."""
    write_json(path, content)


def episode_digest(e: dict[str, Any]) -> str:
    """A short digest of an episode entry's support and validation indices (what the patterns and
    groups of the episode were computed from)."""
    support = [int(i) for i in e["support"]]
    val = [int(i) for i in e.get("val") or []]
    return hashlib.sha256(json.dumps([support, val]).encode()).hexdigest()[:16]


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
