"""What the stage files share: the provenance check of a tensor file and its per-episode entries."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from kshot.errors import DataError
from kshot.io import load_tensors


def stamp(obj: Any) -> str:
    """A short digest of a JSON-able ``obj`` (what a result was computed from)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_stage_file(
    path: str | os.PathLike[str], what: str, fmt: str, made_from: dict[str, Any], stage: str
) -> dict[str, Any]:
    """Load a stage's tensor file (written with :func:`save_tensors`) and check its ``format`` and
    its ``made_from`` record (the inputs it was computed from) against ``made_from``.

    Raises :class:`DataError` naming the file, every input that differs (expected and found) and
    the stage to rerun, so a file made for other inputs is refused rather than silently used.
    """
    content = load_tensors(path, what=what)
    where = f"{what} '{path}'"
    if content.get("format") != fmt:
        raise DataError(f"{where}: expected format {fmt!r}, found {content.get('format')!r}")
    found = content.get("made_from")
    if not isinstance(found, dict):
        raise DataError(f"{where}: expected a 'made_from' record of its inputs, found {_short(found)}")
    differ = [
        f"{key} {_short(want)} (found {_short(found.get(key))})"
        for key, want in made_from.items()
        if found.get(key) != want
    ]
    if differ:
        raise DataError(f"{where}: expected a file made from {'; '.join(differ)}; rerun the {stage} stage")
    return content


def episode_entries(
    content: dict[str, Any],
    path: str | os.PathLike[str],
    what: str,
    section: str,
    keys: list[tuple[str, str]],
    stage: str,
) -> list[dict[str, Any]]:
    """The entries ``content[section][id]`` for ``keys``, pairs of an episode id and the digest of
    its indices that the entry must record (``'digest'``); raises :class:`DataError` naming the
    file for a missing, mismatched or malformed entry."""
    where = f"{what} '{path}'"
    table = content.get(section)
    if not isinstance(table, dict):
        raise DataError(f"{where}: expected a '{section}' mapping of episodes, found {_short(table)}")
    out = []
    for ep_id, digest in keys:
        entry = table.get(ep_id)
        if not isinstance(entry, dict) or entry.get("digest") != digest:
            found = "no entry" if entry is None else "an entry for other images"
            raise DataError(
                f"{where}: expected an entry for episode {ep_id} ({section}) of the episodes file, "
                f"found {found}; rerun the {stage} stage"
            )
        out.append(entry)
    return out
