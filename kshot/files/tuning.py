"""The tuning file: one method's tuning trace (every candidate's rewards) and the candidate it chose
(:class:`kshot.tuning.TuneTrace`), as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kshot.errors import DataError
from kshot.io import read_json, write_json
from kshot.tuning import TuneTrace


def save_tuning(path: str | Path, trace: TuneTrace) -> None:
    write_json(path, trace.to_dict())


def read_chosen(path: str | Path, method: str) -> dict[str, Any]:
    """The option values the tuning of ``method`` chose (its file's ``chosen``)."""
    result = read_json(path, what="tuning result")
    if (
        not isinstance(result, dict)
        or result.get("method") != method
        or not isinstance(result.get("chosen"), dict)
    ):
        found = (
            f"method {result.get('method')!r} and keys {sorted(result)}"
            if isinstance(result, dict)
            else type(result).__name__
        )
        raise DataError(
            f"tuning result '{path}': expected the 'chosen' options of method '{method}' (rerun the "
            f"tune stage), found {found}"
        )
    return result["chosen"]
