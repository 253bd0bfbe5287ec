"""Atomic file output and safe checkpoint loading.

Every file the pipeline writes goes through :func:`atomic_path`: the content is written to a temporary
file in the same folder and renamed into place only when complete, so an interrupted run never leaves
a half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kshot.errors import CheckpointError, DataError


def _default_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A process killed outright (SIGKILL, power loss) cannot remove its temporary file; the next
    write of the same ``path`` does. Each output has one writer at a time (Snakemake runs one job
    per output), so a temporary file of ``path`` that exists before the write is such a leftover.
    """
    target = Path(path)
    if target.is_dir():
        raise DataError(f"output '{target}': expected a file path, found a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode())  # as readable as other new files, e.g. on a cluster
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of the file at ``path`` (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON, atomically (byte-identical for equal objects)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_text(path, text)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a JSON file, raising :class:`DataError` naming the file when it is missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} '{p}': expected an existing JSON file, found nothing")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} '{p}': expected valid JSON, found a corrupt file ({err})") from err


def save_tensors(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Save a dict of tensors and plain values with ``torch.save``, atomically and byte-identical
    for equal contents (saved through a file object, the archive's inner folder is always
    ``archive/``, not the name of the temporary file, so DVC sees a re-run's equal output as equal)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _first_line(err: Exception) -> str:
    """The first informative line of an exception's message (torch's run over several lines and
    open with advice that does not apply here)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)] or lines
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def load_tensors(path: str | os.PathLike[str], what: str = "checkpoint") -> dict[str, Any]:
    """Load a file written by :func:`save_tensors` with ``weights_only=True``.

    Refuses pickles that would run code on loading, and reports missing or corrupt files (any
    member of the archive failing its CRC-32, which ``torch.load`` does not check) with a
    :class:`CheckpointError` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} '{p}': expected an existing file, found nothing")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(
            f"{what} '{p}': expected a torch checkpoint (a zip archive written by torch.save), "
            "found no zip archive: a corrupt or truncated file, or one saved in torch's legacy "
            "format (before torch 1.6 or with _use_new_zipfile_serialization=False: load it and "
            "save it again with torch.save)"
        )
    try:
        with zipfile.ZipFile(p) as archive:  # torch.load does not check the members' CRC-32
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        damaged = f"the archive's directory ({_first_line(err)})"
    if damaged is not None:
        raise CheckpointError(
            f"{what} '{p}': expected a torch checkpoint, found a corrupt file ({damaged} fails its "
            "CRC-32 check)"
        )
    try:
        # memory-mapped: a stage reading a few images of a large prepared target (photos) keeps
        # the rest on disk, and the pages it reads are the page cache's, not the job's own memory
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))
        if unsafe:
            raise CheckpointError(
                f"{what} '{p}': refused to load; expected plain tensors and values (weights_only=True), "
                f"found a reference to {unsafe.group(1)}, which would run code on unpickling"
            ) from err
        raise CheckpointError(
            f"{what} '{p}': expected a torch checkpoint, found a corrupt pickle ({_first_line(err)})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{what} '{p}': expected a torch checkpoint, found a corrupt or truncated file "
            f"({_first_line(err)})"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} '{p}': expected a dict, found {type(obj).__name__}")
    return obj
