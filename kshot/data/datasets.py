"""Dataset registry: acquire raw files into ``data/raw/<name>/`` and load a split as uint8 tensors.

Offline by default: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (gzipped idx
files, gunzipped into the folder layout torchvision's loader expects; their md5 differs from
torchvision's list, so torchvision's own download check is not used) and the 8x8 digits ship with
scikit-learn. MNIST, SVHN, USPS and CIFAR-10 are copied from a local folder named in
``data.local_dirs`` or, only when ``data.download`` is true, fetched with torchvision's real download
code; any ImageFolder tree is reachable through ``data.image_folders``.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.config import DataConfig
from kshot.data.base import DatasetInfo, ImageSet, load_npz, stratified_split
from kshot.data.imagefolder import folder_class_names, imagefolder_info
from kshot.errors import DataError, unknown
from kshot.io import sha256, write_json


def _from_hwc(data: np.ndarray | torch.Tensor, labels: object) -> ImageSet:
    x = torch.as_tensor(np.asarray(data))
    if x.ndim == 3:
        x = x.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    elif x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ImageSet(x.to(torch.uint8).contiguous(), y)


FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _fashion_missing(src: Path) -> list[str]:
    """The Fashion-MNIST files that ``src`` lacks (gzipped or not); a file of 0 bytes is lacking."""

    def present(path: Path) -> bool:
        return path.is_file() and path.stat().st_size > 0

    return [f for f in FASHION_FILES if not present(src / f"{f}.gz") and not present(src / f)]


def _check_gzip(path: Path) -> None:
    """Raise unless ``path`` decompresses to its end (a truncated download or copy does not)."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError) as err:
        raise DataError(
            f"Fashion-MNIST file '{path}': expected a gzipped idx file, "
            f"found a corrupt or truncated one ({err})"
        ) from err


def _check_fashion(cfg: DataConfig) -> None:
    src = Path(cfg.fashion_mnist_dir)
    missing = _fashion_missing(src)
    if not missing:
        for f in FASHION_FILES:
            if not (src / f).is_file():
                _check_gzip(src / f"{f}.gz")
    if missing and not cfg.download:
        raise DataError(
            f"data.fashion_mnist_dir '{src}': expected the Fashion-MNIST idx files "
            f"({', '.join(f + '.gz' for f in missing)}), found "
            f"{'no such folder' if not src.is_dir() else 'them missing or empty'}; install Debian's "
            "'dataset-fashion-mnist' package, point data.fashion_mnist_dir at the files, or set "
            "data.download: true where the network is reachable"
        )


def _fetch_fashion(cfg: DataConfig, out: Path) -> None:
    src = Path(cfg.fashion_mnist_dir)
    raw = out / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not _fashion_missing(src):
        for f in FASHION_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, raw / f)
                continue
            _check_gzip(src / f"{f}.gz")
            with gzip.open(src / f"{f}.gz", "rb") as fin, open(raw / f, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        return
    _check_fashion(cfg)
    try:
        for train in (True, False):
            _tv("FashionMNIST")(str(out), train=train, download=True)
    except (RuntimeError, OSError) as err:
        raise _download_failed("FashionMNIST", err) from err


def _tv(name: str) -> type:
    """The torchvision dataset class ``name``, imported on first use: importing torchvision costs
    about 1.7 s (it pulls in torch._dynamo), which every pipeline job would otherwise pay."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


def _split_args(split_kw: str, split: str) -> dict[str, object]:
    """torchvision's keyword for split 'train' or 'test': SVHN takes ``split=``, the others ``train=``."""
    return {"split": split} if split_kw == "split" else {"train": split == "train"}


def _idx_files(folder: str) -> dict[str, tuple[str, ...]]:
    """The idx files torchvision's MNIST-style classes read; either split needs all four."""
    files = tuple(
        f"{folder}/raw/{p}-{k}-idx{d}-ubyte"
        for p in ("train", "t10k")
        for k, d in (("images", 3), ("labels", 1))
    )
    return dict.fromkeys(("train", "test"), files)


CIFAR10_FILES = tuple(
    f"cifar-10-batches-py/{f}"
    for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
)


def _tv_loader(
    name: str, split_kw: str, files: dict[str, tuple[str, ...]], md5: bool = False
) -> Callable[[Path, str, DataConfig], ImageSet]:
    """Read a split with torchvision's class ``name``, which needs ``files[split]`` under the folder.

    A missing file, or one torchvision rejects (bad format, truncated, or for ``md5`` datasets not
    byte-identical to the official release), raises a DataError naming the folder and the files.
    """

    def load(raw: Path, split: str, cfg: DataConfig) -> ImageSet:
        missing = [f for f in files[split] if not (raw / f).is_file()]
        if missing:
            raise DataError(
                f"dataset folder '{raw}': expected the {name} files {list(files[split])} for the "
                f"{split} split, found {missing} missing"
            )
        try:
            ds = _tv(name)(str(raw), download=False, **_split_args(split_kw, split))
            # SVHN names its labels 'labels' and already holds [N, C, H, W]; the others hold 'targets'
            data = _from_hwc(ds.data, ds.labels if hasattr(ds, "labels") else ds.targets)
        except (
            ValueError,
            AssertionError,
            RuntimeError,
            IndexError,
            KeyError,
            OSError,
            EOFError,
            pickle.UnpicklingError,
        ) as err:
            checked = "; torchvision also checks each file's md5 against the official release" if md5 else ""
            raise DataError(
                f"dataset folder '{raw}': expected well-formed {name} files for the {split} split{checked}, "
                f"found corrupt or truncated files ({type(err).__name__}: {err})"
            ) from err
        if data.images.shape[0] != data.labels.shape[0]:
            raise DataError(
                f"dataset folder '{raw}': expected as many {split} labels as images, found "
                f"{data.labels.shape[0]} labels for {data.images.shape[0]} images"
            )
        return data

    return load


def _copy_local(key: str, name: str, src: Path, files: dict[str, tuple[str, ...]], out: Path) -> None:
    """Copy the files of both splits of ``files`` from ``src``, the folder of ``data.local_dirs.<key>``,
    into ``out`` at the same relative paths; checks all are there before copying any."""
    _copy_files(key, name, src, _check_local(key, name, src, files), out)


def _check_local(key: str, name: str, src: Path, files: dict[str, tuple[str, ...]]) -> list[str]:
    """The files ``data.local_dirs.<key>`` must hold; raises when the folder or one is missing."""
    if not src.is_dir():
        raise DataError(
            f"data.local_dirs.{key}: expected a folder holding the {name} files, found "
            f"{'a file' if src.exists() else 'nothing'} at '{src}'"
        )
    wanted = list(dict.fromkeys(f for split_files in files.values() for f in split_files))
    missing = [f for f in wanted if not (src / f).is_file()]
    if missing:
        raise DataError(
            f"data.local_dirs.{key} '{src}': expected the {name} files {wanted}, laid out as under "
            f"torchvision's root folder, found {missing} missing"
        )
    return wanted


def _copy_files(key: str, name: str, src: Path, wanted: list[str], out: Path) -> None:
    for f in wanted:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src / f, out / f)
        except OSError as err:
            raise DataError(
                f"data.local_dirs.{key} '{src}': expected the {name} file '{f}' to be readable, "
                f"found it could not be copied ({type(err).__name__}: {err})"
            ) from err


def _fetch_torchvision(
    key: str, name: str, split_kw: str, files: dict[str, tuple[str, ...]]
) -> Callable[[DataConfig, Path], None]:
    """Fetch registry entry ``key`` (torchvision class ``name``): copy ``files`` from
    ``data.local_dirs.<key>`` when listed there, else download with torchvision if allowed."""

    def fetch(cfg: DataConfig, out: Path) -> None:
        if key in cfg.local_dirs:
            # a local copy wins over download: it is what the user pointed at, and needs no network
            _copy_local(key, name, Path(cfg.local_dirs[key]).expanduser(), files, out)
            return
        # acquire hands over a fresh empty folder: without a download torchvision has nothing to read
        _check_download(key, name, cfg)
        try:
            for split in ("train", "test"):
                _tv(name)(str(out), download=True, **_split_args(split_kw, split))
        except (RuntimeError, OSError) as err:
            raise _download_failed(name, err) from err

    return fetch


def _download_failed(name: str, err: Exception) -> DataError:
    return DataError(
        f"dataset {name}: expected torchvision to download its files, found the download "
        f"failed ({type(err).__name__}: {' '.join(str(err).split())}); check network access "
        "and disk space (an md5 mismatch means the upstream file changed)"
    )


def _check_download(key: str, name: str, cfg: DataConfig) -> None:
    if key not in cfg.local_dirs and not cfg.download:
        raise DataError(
            f"data.local_dirs.{key} or data.download: expected a folder holding the {name} files "
            "(laid out as under torchvision's root folder) or true to download them with "
            "torchvision (network access needed), found no folder and download false"
        )


def _torchvision_info(
    key: str,
    name: str,
    split_kw: str,
    channels: int,
    size: int,
    files: dict[str, tuple[str, ...]],
    names: list[str],
    md5: bool = False,
) -> DatasetInfo:
    """Registry entry ``key`` read by torchvision's class ``name``; fetch and load share ``files``;
    ``names``: its classes' names in label order."""
    return DatasetInfo(
        channels,
        size,
        _fetch_torchvision(key, name, split_kw, files),
        _tv_loader(name, split_kw, files, md5),
        local_files=files,
        check=lambda cfg: (
            _check_local(key, name, Path(cfg.local_dirs[key]).expanduser(), files)
            if key in cfg.local_dirs
            else _check_download(key, name, cfg)
        ),
        names=_named(names),
    )


DIGIT_NAMES = [str(d) for d in range(10)]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _named(names: list[str]) -> Callable[[Path], list[str]]:
    return lambda raw: list(names)


def _fetch_digits(cfg: DataConfig, out: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [1797, 8, 8]
    np.savez_compressed(out / "digits.npz", images=images, labels=digits.target.astype(np.int64))


def _load_digits(raw: Path, split: str, cfg: DataConfig) -> ImageSet:
    images, labels = load_npz(raw / "digits.npz", "digits file")
    idx = stratified_split(labels, cfg.digits_test_fraction, seed=0)[split]
    return _from_hwc(images[idx], labels[idx])


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        1,
        28,
        _fetch_fashion,
        _tv_loader("FashionMNIST", "train", _idx_files("FashionMNIST")),
        check=_check_fashion,
        names=lambda raw: list(_tv("FashionMNIST").classes),
    ),
    "digits": DatasetInfo(1, 8, _fetch_digits, _load_digits, names=_named(DIGIT_NAMES)),
    "mnist": _torchvision_info("mnist", "MNIST", "train", 1, 28, _idx_files("MNIST"), DIGIT_NAMES),
    "usps": _torchvision_info(
        "usps", "USPS", "train", 1, 16, {"train": ("usps.bz2",), "test": ("usps.t.bz2",)}, DIGIT_NAMES
    ),
    "svhn": _torchvision_info(
        "svhn",
        "SVHN",
        "split",
        3,
        32,
        {s: (f"{s}_32x32.mat",) for s in ("train", "test")},
        DIGIT_NAMES,
        md5=True,
    ),
    "cifar10": _torchvision_info(
        "cifar10",
        "CIFAR10",
        "train",
        3,
        32,
        dict.fromkeys(("train", "test"), CIFAR10_FILES),
        CIFAR10_NAMES,
        md5=True,
    ),
}


def local_dir_datasets() -> list[str]:
    """The registered datasets that ``data.local_dirs`` may name: those with ``local_files``."""
    return sorted(name for name, info in DATASETS.items() if info.local_files is not None)


def dataset_info(name: str, cfg: DataConfig) -> DatasetInfo:
    """The registry entry for ``name``; ImageFolder trees come from ``data.image_folders``."""
    if name in DATASETS:
        return DATASETS[name]
    if name in cfg.image_folders:
        return imagefolder_info(name, Path(cfg.image_folders[name]), cfg.image_folder_side)
    raise unknown("dataset", name, set(DATASETS) | set(cfg.image_folders))


def class_names(name: str, raw_dir: str | os.PathLike[str]) -> list[str] | None:
    """The class names of dataset ``name`` acquired in ``raw_dir``, in label order (an ImageFolder
    tree's from the folder; None where the labels are the only names)."""
    info = DATASETS.get(name)
    if info is None:
        return folder_class_names(Path(raw_dir))
    return info.names(Path(raw_dir)) if info.names else None


def acquired_from(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``data`` fields the dataset in ``out_dir`` was acquired with (None: not acquired, or by
    an older kshot)."""
    try:
        manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("source") if isinstance(manifest, dict) else None


def check_acquirable(name: str, cfg: DataConfig) -> None:
    """Raise the :class:`DataError` that acquiring ``name`` would, where it can be known without
    fetching: a missing or empty folder or file, a download that is not allowed."""
    dataset_info(name, cfg).check(cfg)


def acquire(
    name: str, cfg: DataConfig, out_dir: str | os.PathLike[str], source: dict[str, Any] | None = None
) -> dict[str, str]:
    """Fetch dataset ``name`` into ``out_dir`` and write ``manifest.json`` (sha256 of every file,
    and ``source``: the ``data`` fields it was acquired with, see :func:`acquired_from`).

    The folder is built under a temporary name and renamed into place when complete, so a failed or
    interrupted acquisition leaves no folder behind. Returns the manifest mapping.
    """
    info = dataset_info(name, cfg)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        info.fetch(cfg, tmp)
        manifest = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json(tmp / "manifest.json", {"dataset": name, "source": source, "sha256": manifest})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def load_split(name: str, split: str, cfg: DataConfig, raw_dir: str | os.PathLike[str]) -> ImageSet:
    """Load split ``'train'`` or ``'test'`` of an acquired dataset as ``uint8 [N, C, H, W]``."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', found {split!r}")
    info = dataset_info(name, cfg)
    raw = Path(raw_dir)
    if not (raw / "manifest.json").is_file():
        raise DataError(
            f"dataset folder '{raw}': expected an acquired dataset with manifest.json, found none; "
            f"run the 'acquire' step for '{name}' first"
        )
    return info.load(raw, split, cfg)
