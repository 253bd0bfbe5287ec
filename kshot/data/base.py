"""What every dataset reader shares: a split's tensors, a dataset's registry entry, the npz files
written at acquisition and a seeded per-class split."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kshot.config import DataConfig
from kshot.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetInfo:
    """How to fetch and read one dataset; ``channels``/``size`` are its native geometry.

    ``local_files`` maps each split to the files (relative to torchvision's root folder) that
    ``data.local_dirs.<name>`` must hold; None where the dataset cannot come from ``data.local_dirs``.
    ``check`` raises what ``fetch`` would about a missing or empty source (a folder, a file, a
    download not allowed) without fetching anything: the Snakefile calls it while the DAG is built.
    ``names`` gives the class names in label order from the acquired folder (None: the labels are
    the classes' only names).
    """

    channels: int
    size: int
    fetch: Callable[[DataConfig, Path], None]
    load: Callable[[Path, str, DataConfig], ImageSet]
    local_files: dict[str, tuple[str, ...]] | None = None
    check: Callable[[DataConfig], None] = lambda cfg: None
    names: Callable[[Path], list[str]] | None = None


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Per class, a seeded ``test_fraction`` of the indices goes to test, the rest to train."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * test_fraction)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def load_npz(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``images`` and ``labels`` arrays of an npz written at acquisition; errors name the file."""
    try:
        with np.load(path) as f:
            return f["images"], f["labels"]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(
            f"{what} '{path}': expected an npz with images and labels, found a missing, "
            f"corrupt or truncated file ({type(err).__name__}: {err})"
        ) from err
