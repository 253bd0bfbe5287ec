"""The prepared file of a source or of a benchmark's target (:mod:`kshot.data.prepare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kshot.errors import DataError
from kshot.io import load_tensors, save_tensors


def save_prepared(path: Path, content: dict[str, Any]) -> None:
    """Write a prepared split (its tensors and ``meta``)."""
    save_tensors(path, content)


def load_prepared(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Load a prepared file and check it has ``keys``."""
    obj = load_tensors(path, what="prepared data")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"prepared data '{path}': expected keys {list(keys)}, found {sorted(obj)}")
    return obj


def check_target_of(path: Path, meta: dict[str, Any], benchmark: str) -> None:
    """Raise :class:`DataError` unless the prepared target at ``path`` (its ``meta``) is
    ``benchmark``'s."""
    if meta.get("name") != benchmark:
        raise DataError(
            f"prepared data '{path}': expected the target of benchmark '{benchmark}', found that "
            f"of {meta.get('name')!r}"
        )


def load_target(path: Path, benchmark: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The prepared target of ``benchmark`` at ``path`` with ``keys`` (``meta`` always loaded)."""
    data = load_prepared(path, (*keys, "meta") if "meta" not in keys else keys)
    check_target_of(path, data["meta"], benchmark)
    return data


def target_labels(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The pool and test labels of a prepared target, read lazily (memory-mapped, no checksum):
    a quick look for checks made while the DAG is built. None when the file is missing or not a
    prepared target; the job that reads it says why."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return obj["pool_y"], obj["test_y"]
    except Exception:  # any unreadable file: the stage that reads it reports it by name
        return None
