"""Any folder of images, one sub-folder per class (torchvision's ImageFolder layout).

``root/train/<class>/*`` and ``root/test/<class>/*`` are used as the splits when both exist, with
the same class folders (Office-31 style trees without them are split per class, seeded, by
``data.digits_test_fraction``; a tree with other split folders, ``train/`` and ``val/`` say, is
refused rather than read as two classes). Images are converted to RGB and resized to a fixed square
side at acquisition (``data.image_folder_side``: 224 for photos fed to ResNet-18 at ImageNet's
size), so later stages handle tensors of one shape. They are stored as uint8 (150 KB an image at
224: 0.6 GB for 4,000) and every later stage feeds them to the network in bounded batches
(:func:`kshot.finetune.predict`, :func:`kshot.finetune.micro_batches`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kshot.config import DataConfig
from kshot.data.base import DatasetInfo, ImageSet, load_npz, stratified_split
from kshot.errors import DataError, finding


def _read_tree(root: Path, side: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import torchvision  # here: importing it costs every pipeline job about 2 s at start-up

    try:
        tree = torchvision.datasets.ImageFolder(str(root), allow_empty=False)
    except FileNotFoundError as err:
        raise DataError(
            f"image folder '{root}': expected one sub-folder per class, each with at least one "
            f"image (.jpg, .png, ...), found {finding(err)}"
        ) from err
    images = np.empty((len(tree.samples), side, side, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tree.samples):
        try:
            with Image.open(path) as img:
                images[i] = np.asarray(img.convert("RGB").resize((side, side), Image.BILINEAR))
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(
                f"image file '{path}': expected a readable image, found a corrupt or non-image file ({err})"
            ) from err
        except Image.DecompressionBombError as err:  # over twice PIL's pixel limit (~179 megapixels)
            raise DataError(f"image file '{path}': expected a photo-sized image, found {err}") from err
    return images, np.asarray(tree.targets, dtype=np.int64), tree.classes


def _check(root: Path):
    def check(cfg: DataConfig) -> None:
        if not root.is_dir():
            raise DataError(f"image folder '{root}': expected an existing folder, found nothing")
        if not any(p.is_dir() for p in root.iterdir()):
            raise DataError(
                f"image folder '{root}': expected one sub-folder per class (or train/ and test/), "
                "found no sub-folder"
            )

    return check


SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _splits(root: Path) -> dict[str, Path]:
    """The tree's splits: ``train/`` and ``test/`` when it has both, with the same class folders;
    else the whole tree (``all``, split per class later). A split folder is one named like a split
    that holds sub-folders (a class named ``train`` holds images); a tree with split folders but not
    that pair (``train/`` and ``val/``, say) is refused: its split folders would be read as classes."""
    named = {name: _subfolders(root / name) for name in _subfolders(root) if name.lower() in SPLIT_FOLDERS}
    classes_of = {name: classes for name, classes in named.items() if classes}  # the split folders
    if {"train", "test"} <= classes_of.keys():
        train, test = classes_of["train"], classes_of["test"]
        if train != test:  # each split numbers its own classes alphabetically: other labels
            raise DataError(
                f"image folder '{root}': expected the same class folders in train/ and test/, found "
                f"{sorted(set(train) - set(test))} only in train/ and {sorted(set(test) - set(train))} "
                "only in test/"
            )
        return {"train": root / "train", "test": root / "test"}
    if classes_of:
        found = " and ".join(f"{name}/" for name in classes_of)
        raise DataError(
            f"image folder '{root}': expected train/ and test/ (each with one sub-folder per class) "
            f"or class folders only, found {found}"
        )
    return {"all": root}


def _fetch(root: Path, side: int):
    def fetch(cfg: DataConfig, out: Path) -> None:
        _check(root)(cfg)
        for split, folder in _splits(root).items():
            images, labels, classes = _read_tree(folder, side)
            np.savez_compressed(out / f"{split}.npz", images=images, labels=labels)
            (out / f"{split}_classes.txt").write_text("\n".join(classes) + "\n")

    return fetch


def _load(raw: Path, split: str, cfg: DataConfig) -> ImageSet:
    whole = (raw / "all.npz").is_file()
    images, labels = load_npz(raw / ("all.npz" if whole else f"{split}.npz"), "image folder file")
    if whole:
        idx = stratified_split(labels, cfg.digits_test_fraction, seed=0)[split]
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # [N, 3, S, S]
    return ImageSet(x, torch.from_numpy(labels))


def folder_class_names(raw: Path) -> list[str]:
    """The class (sub-folder) names of an acquired tree, in label order: alphabetical, as
    torchvision's ImageFolder numbers them (the train split's where the tree has train/ and test/)."""
    for split in ("train", "all"):
        listed = raw / f"{split}_classes.txt"
        if listed.is_file():
            return listed.read_text().splitlines()
    raise DataError(f"dataset folder '{raw}': expected train_classes.txt or all_classes.txt, found neither")


def imagefolder_info(name: str, root: Path, side: int) -> DatasetInfo:
    del name
    return DatasetInfo(3, side, _fetch(root, side), _load, check=_check(root), names=folder_class_names)
