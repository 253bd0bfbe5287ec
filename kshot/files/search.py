"""The search file: one search's trace (every sample, the finalists) and the counts it chose
(:class:`kshot.search.SearchTrace`), as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kshot.errors import DataError
from kshot.io import read_json, write_json
from kshot.search import SearchTrace, expand_counts


def save_trace(path: str | Path, trace: SearchTrace) -> None:
    write_json(path, trace.to_dict())


def read_chosen_counts(path: str | Path) -> dict[str, Any]:
    """The counts per layer a search chose (its file's ``chosen_counts``, per stage where the search
    tied the layers of a stage: then expanded by its ``units``)."""
    result = read_json(path, what="search result")
    if not isinstance(result, dict) or not isinstance(result.get("chosen_counts"), dict):
        found = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise DataError(
            f"search result '{path}': expected a 'chosen_counts' mapping (rerun the search "
            f"stage), found keys {found}"
        )
    return expand_counts(result["chosen_counts"], result.get("units") or {})
