"""Dataset registry: acquire raw files into ``data/raw/<name>/`` and load a split as uint8 tensors.

Offline by default: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (gzipped idx
files, gunzipped into the folder layout torchvision's loader expects; their md5 differs from
torchvision's list, so torchvision's own download check is not used) and the 8x8 digits ship with
scikit-learn. MNIST, SVHN, USPS and CIFAR-10 use torchvision's real download code, only when
``data.download`` is true; any ImageFolder tree is reachable through ``data.image_folders``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kshot.config import DataConfig
from kshot.errors import DataError, unknown
from kshot.io import write_json


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetInfo:
    """How to fetch and read one dataset; ``channels``/``size`` are its native geometry."""

    channels: int
    size: int
    fetch: Callable[[DataConfig, Path], None]
    load: Callable[[Path, str, DataConfig], ImageSet]


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


def _fetch_fashion(cfg: DataConfig, out: Path) -> None:
    src = Path(cfg.fashion_mnist_dir)
    raw = out / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    missing = [f for f in FASHION_FILES if not (src / f"{f}.gz").is_file() and not (src / f).is_file()]
    if not missing:
        for f in FASHION_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, raw / f)
                continue
            try:
                with gzip.open(src / f"{f}.gz", "rb") as fin, open(raw / f, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except (OSError, EOFError) as err:
                raise DataError(
                    f"Fashion-MNIST file '{src / f}.gz': expected a gzipped idx file, "
                    f"found a corrupt or truncated one ({err})"
                ) from err
        return
    if cfg.download:
        _tv("FashionMNIST")(str(out), train=True, download=True)
        _tv("FashionMNIST")(str(out), train=False, download=True)
        return
    raise DataError(
        f"data.fashion_mnist_dir '{src}': expected the Fashion-MNIST idx files "
        f"({', '.join(f + '.gz' for f in missing)}), found none of them there; install Debian's "
        "'dataset-fashion-mnist' package, point data.fashion_mnist_dir at the files, or set "
        "data.download: true where the network is reachable"
    )


def _tv(name: str) -> type:
    """The torchvision dataset class ``name``, imported on first use: importing torchvision costs
    about 1.7 s (it pulls in torch._dynamo), which every pipeline job would otherwise pay."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


def _idx_loader(name: str) -> Callable[[Path, str, DataConfig], ImageSet]:
    """Read MNIST-format idx files with torchvision; corrupt or truncated files name the folder."""

    def load(raw: Path, split: str, cfg: DataConfig) -> ImageSet:
        try:
            ds = _tv(name)(str(raw), train=split == "train", download=False)
            data = _from_hwc(ds.data, ds.targets)
        except (ValueError, AssertionError, RuntimeError, IndexError) as err:
            raise DataError(
                f"dataset folder '{raw}': expected well-formed {name} idx files for the "
                f"{split} split, found missing, corrupt or truncated files "
                f"({type(err).__name__}: {err})"
            ) from err
        if data.images.shape[0] != data.labels.shape[0]:
            raise DataError(
                f"dataset folder '{raw}': expected as many {split} labels as images, found "
                f"{data.labels.shape[0]} labels for {data.images.shape[0]} images"
            )
        return data

    return load


def _fetch_torchvision(name: str, split_kw: str) -> Callable[[DataConfig, Path], None]:
    def fetch(cfg: DataConfig, out: Path) -> None:
        splits = {"train": ("train", "test"), "bool": (True, False)}[split_kw]
        try:
            for s in splits:
                kw = {"split": s} if split_kw == "train" else {"train": s}
                _tv(name)(str(out), download=cfg.download, **kw)
        except RuntimeError as err:
            raise DataError(
                f"dataset {name}: expected its files under '{out}' or data.download: true "
                f"with network access; found neither ({err})"
            ) from err

    return fetch


def _load_svhn(raw: Path, split: str, cfg: DataConfig) -> ImageSet:
    ds = _tv("SVHN")(str(raw), split=split, download=False)
    return _from_hwc(torch.as_tensor(ds.data), ds.labels)  # data is already [N, 3, 32, 32]


def _load_tv(name: str) -> Callable[[Path, str, DataConfig], ImageSet]:
    def load(raw: Path, split: str, cfg: DataConfig) -> ImageSet:
        ds = _tv(name)(str(raw), train=split == "train", download=False)
        return _from_hwc(ds.data, ds.targets)

    return load


def _fetch_digits(cfg: DataConfig, out: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [1797, 8, 8]
    np.savez_compressed(out / "digits.npz", images=images, labels=digits.target.astype(np.int64))


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


def _load_digits(raw: Path, split: str, cfg: DataConfig) -> ImageSet:
    images, labels = load_npz(raw / "digits.npz", "digits file")
    idx = stratified_split(labels, cfg.digits_test_fraction, seed=0)[split]
    return _from_hwc(images[idx], labels[idx])


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(1, 28, _fetch_fashion, _idx_loader("FashionMNIST")),
    "digits": DatasetInfo(1, 8, _fetch_digits, _load_digits),
    "mnist": DatasetInfo(
        1,
        28,
        _fetch_torchvision("MNIST", "bool"),
        _idx_loader("MNIST"),
    ),
    "usps": DatasetInfo(
        1,
        16,
        _fetch_torchvision("USPS", "bool"),
        _load_tv("USPS"),
    ),
    "svhn": DatasetInfo(3, 32, _fetch_torchvision("SVHN", "train"), _load_svhn),
    "cifar10": DatasetInfo(
        3,
        32,
        _fetch_torchvision("CIFAR10", "bool"),
        _load_tv("CIFAR10"),
    ),
}


def dataset_info(name: str, cfg: DataConfig) -> DatasetInfo:
    """The registry entry for ``name``; ImageFolder trees come from ``data.image_folders``."""
    if name in DATASETS:
        return DATASETS[name]
    if name in cfg.image_folders:
        from kshot.data.imagefolder import imagefolder_info

        return imagefolder_info(name, Path(cfg.image_folders[name]))
    raise unknown("dataset", name, set(DATASETS) | set(cfg.image_folders))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def acquire(name: str, cfg: DataConfig, out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Fetch dataset ``name`` into ``out_dir`` and write ``manifest.json`` (sha256 of every file).

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
        write_json(tmp / "manifest.json", {"dataset": name, "sha256": manifest})
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
