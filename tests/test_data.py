import gzip

import numpy as np
import pytest
import torch

from kshot.config import DataConfig
from kshot.data.datasets import ImageSet, acquire, load_split
from kshot.data.prepare import select_classes, to_geometry
from kshot.errors import ConfigError, DataError


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    header = np.array([0x00000803, n, h, w], dtype=">i4").tobytes()
    return header + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return np.array([0x00000801, len(labels)], dtype=">i4").tobytes() + labels.astype(np.uint8).tobytes()


def write_fake_fashion(folder, n_train=30, n_test=20, truncate=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = _idx_images(rng.integers(0, 255, (n, 28, 28)))
        if truncate and prefix == "train":
            imgs = imgs[: len(imgs) // 2]
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(imgs))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(np.arange(n) % 10)))


def test_fashion_from_debian_style_gz_files_loads_both_splits(tmp_path):
    write_fake_fashion(tmp_path / "deb")
    cfg = DataConfig(fashion_mnist_dir=str(tmp_path / "deb"))
    manifest = acquire("fashion_mnist", cfg, tmp_path / "raw")
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in manifest
    train = load_split("fashion_mnist", "train", cfg, tmp_path / "raw")
    test = load_split("fashion_mnist", "test", cfg, tmp_path / "raw")
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == [i % 10 for i in range(20)]


def test_missing_fashion_files_name_the_folder_and_leave_nothing(tmp_path):
    cfg = DataConfig(fashion_mnist_dir=str(tmp_path / "absent"))
    with pytest.raises(DataError, match=r"data.fashion_mnist_dir '.*absent'.*dataset-fashion-mnist"):
        acquire("fashion_mnist", cfg, tmp_path / "raw" / "fashion_mnist")
    assert not (tmp_path / "raw" / "fashion_mnist").exists()
    assert list((tmp_path / "raw").iterdir()) == []


def test_truncated_idx_file_is_reported_as_corrupt(tmp_path):
    write_fake_fashion(tmp_path / "deb", truncate=True)
    cfg = DataConfig(fashion_mnist_dir=str(tmp_path / "deb"))
    acquire("fashion_mnist", cfg, tmp_path / "raw")
    with pytest.raises(DataError, match=r"train split.*corrupt or truncated"):
        load_split("fashion_mnist", "train", cfg, tmp_path / "raw")


def test_corrupt_gzip_is_reported_with_its_file(tmp_path):
    write_fake_fashion(tmp_path / "deb")
    (tmp_path / "deb" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    cfg = DataConfig(fashion_mnist_dir=str(tmp_path / "deb"))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz.*corrupt"):
        acquire("fashion_mnist", cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_digits_split_is_stratified_disjoint_and_deterministic(tmp_path):
    cfg = DataConfig()
    acquire("digits", cfg, tmp_path / "digits")
    train = load_split("digits", "train", cfg, tmp_path / "digits")
    test = load_split("digits", "test", cfg, tmp_path / "digits")
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8)
    assert torch.bincount(test.labels).min() >= 85
    again = load_split("digits", "test", cfg, tmp_path / "digits")
    assert torch.equal(again.images, test.images)


def test_loading_before_acquiring_names_the_step(tmp_path):
    with pytest.raises(DataError, match=r"manifest.json.*acquire"):
        load_split("digits", "train", DataConfig(), tmp_path / "nothing")


def test_unknown_dataset_suggests_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'mnist'"):
        acquire("mnsit", DataConfig(), tmp_path / "x")


def test_to_geometry_resizes_and_converts_channels():
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    out = to_geometry(x, 1, 28)
    assert out.shape == (4, 1, 28, 28) and out.dtype == torch.uint8
    back = to_geometry(out, 3, 28)
    assert torch.equal(back[:, 0], back[:, 2])


def test_select_classes_relabels_in_listed_order_and_rejects_absent_classes():
    data = ImageSet(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2]))
    picked = select_classes(data, [2, 0], "f", "d")
    assert picked.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(DataError, match=r"f: expected classes present in d.*\[7\] absent"):
        select_classes(data, [0, 7], "f", "d")
