"""Source and target splits as tensors in the source network's input geometry.

A prepared split holds uint8 images ``[N, C, S, S]`` and labels remapped to ``0..len(classes)-1``
(in the order the classes are listed in params), plus a sha256 of the tensors for provenance.
Target images are converted to the source's channels and side, so one backbone reads both.
:mod:`kshot.files.prepared` writes and reads it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kshot.config import BenchmarkConfig, DataConfig, SourceConfig
from kshot.data.datasets import ImageSet, dataset_info, load_split
from kshot.errors import DataError


def to_geometry(images: torch.Tensor, channels: int, side: int, chunk: int = 256) -> torch.Tensor:
    """Convert uint8 ``[N, C, H, W]`` to uint8 ``[N, channels, side, side]`` (luminance or
    channel repetition; antialiased bilinear resizing). Images already of that geometry are
    returned as they are; the others are converted ``chunk`` at a time into the uint8 result, so
    the float copy never holds more than ``chunk`` images (photo-sized targets stay in bounds)."""
    n, c, h, w = images.shape
    if c == channels and h == side and w == side:
        return images
    if not (c == channels or (c, channels) in ((3, 1), (1, 3))):
        raise DataError(f"cannot convert {c}-channel images to {channels} channels")
    out = torch.empty((n, channels, side, side), dtype=torch.uint8)
    for start in range(0, n, chunk):
        x = images[start : start + chunk].float()
        if c == 3 and channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if h != side or w != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def select_classes(data: ImageSet, classes: list[int], field: str, origin: str) -> ImageSet:
    """Keep the images of ``classes`` and relabel them ``0..len(classes)-1`` in the listed order."""
    present = sorted(int(c) for c in torch.unique(data.labels))
    if not present:
        raise DataError(f"{field}: expected images of classes {classes} in {origin}, found no images")
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(
            f"{field}: expected classes present in {origin} (labels {present[0]}..{present[-1]}), "
            f"found {missing} absent"
        )
    remap = torch.full((max(present) + 1,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    new = remap[data.labels]
    keep = new >= 0
    return ImageSet(data.images[keep], new[keep])


def _cap_per_class(data: ImageSet, max_per_class: int | None, seed: int) -> ImageSet:
    if max_per_class is None:
        return data
    rng = np.random.default_rng(seed)
    labels = data.labels.numpy()
    idx = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
        )
    )
    t = torch.from_numpy(idx)
    return ImageSet(data.images[t], data.labels[t])


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def source_geometry(src: SourceConfig, data: DataConfig) -> tuple[int, int]:
    """(channels, side) of the source network's input."""
    info = dataset_info(src.dataset, data)
    return info.channels, src.image_size or info.size


def _prepare(
    name: str,
    dataset: str,
    classes: list[int],
    field: str,
    geometry: tuple[int, int],
    splits: dict[str, str],
    data: DataConfig,
    raw_dir: Path,
    cap: tuple[int | None, int] = (None, 0),
) -> dict[str, Any]:
    """Select ``classes`` of each split (``{dataset split: stored name}``) and convert them to
    ``geometry``; returns ``<stored>_x``/``<stored>_y`` and their summary ``meta``. ``cap`` is
    (images per class at most, seed), applied to the first split."""
    channels, side = geometry
    parts: dict[str, torch.Tensor] = {}
    for i, (split, key) in enumerate(splits.items()):
        d = select_classes(load_split(dataset, split, data, raw_dir), classes, field, dataset)
        if i == 0:
            d = _cap_per_class(d, *cap)
        parts[f"{key}_x"] = to_geometry(d.images, channels, side)
        parts[f"{key}_y"] = d.labels
    summary = {"name": name, "dataset": dataset, "classes": classes, "channels": channels, "side": side}
    summary.update({f"n_{key}": len(parts[f"{key}_y"]) for key in splits.values()})
    summary["sha256"] = digest(parts)
    return {**parts, "meta": summary}


def prepare_source(
    name: str, src: SourceConfig, data: DataConfig, raw_dir: Path, seed: int
) -> dict[str, Any]:
    """The source train/test split of ``sources.<name>`` (``train_x``, ``train_y``, ``test_x``,
    ``test_y`` and ``meta``)."""
    return _prepare(
        name,
        src.dataset,
        src.classes,
        f"sources.{name}.classes",
        source_geometry(src, data),
        {"train": "train", "test": "test"},
        data,
        raw_dir,
        cap=(src.max_per_class, seed),
    )


def prepare_target(
    name: str,
    bench: BenchmarkConfig,
    geometry: tuple[int, int],
    data: DataConfig,
    raw_dir: Path,
) -> dict[str, Any]:
    """The target pool (episodes draw support and validation from it) and test split of
    ``benchmarks.<name>`` (``pool_x``, ``pool_y``, ``test_x``, ``test_y`` and ``meta``)."""
    return _prepare(
        name,
        bench.target,
        bench.target_classes,
        f"benchmarks.{name}.target_classes",
        geometry,
        {"train": "pool", "test": "test"},
        data,
        raw_dir,
    )
