"""A method's run on one benchmark and k: per-episode records (the resume points) and the summary.

Each finished episode is written to ``<out_dir>/episodes/ep<id>.json`` at once, stamped with
:func:`run_key`, a digest of everything that determines it (method spec, fine-tuning config, seed,
checkpoint, data and kshot's own code); a rerun after an interruption reuses exactly the episodes
whose stamp matches and computes the rest. The summary ``metrics.json`` holds no timings, so
identical params give byte-identical files; wall times go to ``timings.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from kshot.files.common import stamp
from kshot.io import write_json


@functools.cache
def code_digest() -> str:
    """sha256 of kshot's own source files: a resumed episode is trusted only if it was computed by
    the same code (any edit, even one that should not change numbers, recomputes)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_key(determined_by: dict[str, Any]) -> str:
    """The stamp of a run's episodes: ``determined_by`` and kshot's code."""
    return stamp({**determined_by, "code": code_digest()})


def episode_path(out_dir: Path, episode: int) -> Path:
    return out_dir / "episodes" / f"ep{episode:03d}.json"


def read_finished(path: Path, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The metrics and timing of a finished episode's record at ``path`` when its stamp is ``key``;
    ``None`` when there is none, it was made from other inputs, or it is damaged (recomputed,
    never trusted)."""
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
        if done.get("stamp") == key:
            return done["metrics"], done["timing"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError, TypeError):
        pass
    return None


def save_episode(path: Path, key: str, metrics: dict[str, Any], timing: dict[str, Any]) -> None:
    write_json(path, {"stamp": key, "metrics": metrics, "timing": timing})


def save_run(out_dir: Path, summary: dict[str, Any], timings: list[dict[str, Any]]) -> None:
    """Write ``metrics.json`` (``summary``) and ``timings.json`` of a finished run."""
    write_json(out_dir / "metrics.json", summary)
    write_json(
        out_dir / "timings.json",
        {"episodes": timings, "total_wall_time_s": sum(t["wall_time_s"] for t in timings)},
    )
