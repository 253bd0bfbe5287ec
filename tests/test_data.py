import bz2
import gzip
import io
import json
import pickle
import re
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import scipy.io
import torch

from kshot.config import DataConfig, from_dict
from kshot.data.datasets import DATASETS, ImageSet, acquire, class_names, load_split
from kshot.data.prepare import select_classes, to_geometry
from kshot.errors import ConfigError, DataError
from kshot.params import params_from_dict


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


def test_class_names_in_label_order_for_registry_datasets_and_image_folders(tmp_path):
    from PIL import Image

    assert class_names("fashion_mnist", tmp_path)[5:] == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert class_names("digits", tmp_path) == [str(d) for d in range(10)]
    assert class_names("cifar10", tmp_path)[:2] == ["airplane", "automobile"]
    tree = tmp_path / "pets"
    for c in ("dog", "cat", "bird"):  # made in another order than the alphabetical one
        (tree / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tree / c / "0.png")
    acquire("pets", DataConfig(image_folders={"pets": str(tree)}), tmp_path / "raw" / "pets")
    assert class_names("pets", tmp_path / "raw" / "pets") == ["bird", "cat", "dog"]
    with pytest.raises(DataError, match=r"dataset folder '.*nowhere': expected train_classes.txt"):
        class_names("pets", tmp_path / "nowhere")


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


# Synthetic MNIST, USPS, SVHN and CIFAR-10 files in the formats torchvision's classes read. Each
# writer encodes the expected images (uint8 [N, C, H, W]) and labels (0..9) the way the real release
# does, so a loader that mislabels or mis-orients gets caught.

TV_SIZES = {"train": 12, "test": 7}
USPS_LEVELS = {0: "-1", 63: "-0.5", 127: "0", 191: "0.5", 255: "1"}  # (v + 1) / 2 * 255, truncated


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test here may download: every URL open and socket connect fails as when offline."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)


@pytest.fixture
def accept_any_md5(monkeypatch):
    """Synthetic SVHN and CIFAR-10 files cannot match torchvision's md5 of the real release."""
    monkeypatch.setattr("torchvision.datasets.utils.check_md5", lambda *args, **kwargs: True)


def tv_expected(name):
    """Per split, images uint8 [N, C, H, W] of the dataset's native geometry and labels int64 [N]."""
    info, rng, out = DATASETS[name], np.random.default_rng(0), {}
    for offset, (split, n) in enumerate(TV_SIZES.items()):
        shape = (n, info.channels, info.size, info.size)
        if name == "usps":
            images = rng.choice(list(USPS_LEVELS), shape).astype(np.uint8)
        else:
            images = rng.integers(0, 256, shape, dtype=np.uint8)
        out[split] = images, (np.arange(n) * 3 + offset) % 10  # both splits hold a 0
    return out


def write_mnist(folder, expected):
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = expected[split]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_images(images[:, 0]))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_labels(labels))


def write_usps(folder, expected):
    """libsvm text, bz2-compressed: '<label 1..10> 1:<v> ... 256:<v>' with v in [-1, 1]."""
    folder.mkdir(parents=True)
    for split, file in (("train", "usps.bz2"), ("test", "usps.t.bz2")):
        images, labels = expected[split]
        lines = [
            f"{y + 1} " + " ".join(f"{j}:{USPS_LEVELS[int(v)]}" for j, v in enumerate(x.ravel(), 1))
            for x, y in zip(images, labels, strict=True)
        ]
        (folder / file).write_bytes(bz2.compress("\n".join(lines).encode() + b"\n"))


def write_svhn(folder, expected):
    """Matlab files with X uint8 [H, W, C, N] and y [N, 1], where the digit 0 is labelled 10."""
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        images, labels = expected[split]
        y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": y})


def write_cifar10(folder, expected):
    """Pickled dicts with data uint8 [n, 3072] (R, G, B planes, row-major) and labels; train in 5 batches."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    train_images, train_labels = expected["train"]
    parts = np.array_split(np.arange(len(train_labels)), 5)
    files = [(f"data_batch_{i}", (train_images[idx], train_labels[idx])) for i, idx in enumerate(parts, 1)]
    for file, (images, labels) in [*files, ("test_batch", expected["test"])]:
        batch = {"batch_label": file, "data": images.reshape(len(images), -1), "labels": labels.tolist()}
        (batches / file).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class {c}" for c in range(10)]}
    (batches / "batches.meta").write_bytes(pickle.dumps(meta))


TV_WRITERS = {"mnist": write_mnist, "usps": write_usps, "svhn": write_svhn, "cifar10": write_cifar10}


def write_acquired(name, folder):
    """The folder acquire would leave: the dataset's files and a manifest. Returns the expected splits."""
    expected = tv_expected(name)
    TV_WRITERS[name](folder, expected)
    (folder / "manifest.json").write_text(json.dumps({"dataset": name, "sha256": {}}))
    return expected


def assert_split_is(data, expected, name):
    images, labels = expected
    info = DATASETS[name]
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert data.images.shape == (len(labels), info.channels, info.size, info.size)
    assert torch.equal(data.images, torch.from_numpy(images))
    assert data.labels.tolist() == labels.tolist()


@pytest.mark.usefixtures("accept_any_md5")
@pytest.mark.parametrize("name", TV_WRITERS)
def test_torchvision_dataset_loads_both_splits_with_native_geometry_pixels_and_digit_labels(tmp_path, name):
    expected = write_acquired(name, tmp_path / name)
    for split in ("train", "test"):
        assert_split_is(load_split(name, split, DataConfig(), tmp_path / name), expected[split], name)


@pytest.mark.usefixtures("accept_any_md5")
@pytest.mark.parametrize(
    "name, gone, split",
    [
        ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte", "train"),  # torchvision wants all four idx files
        ("usps", "usps.t.bz2", "test"),
        ("svhn", "train_32x32.mat", "train"),
        ("cifar10", "cifar-10-batches-py/batches.meta", "test"),
    ],
)
def test_missing_torchvision_file_is_named_with_its_folder(tmp_path, name, gone, split):
    write_acquired(name, tmp_path / name)
    (tmp_path / name / gone).unlink()
    folder = re.escape(str(tmp_path / name))
    with pytest.raises(
        DataError, match=rf"dataset folder '{folder}'.*{split} split, found \['{gone}'\] missing"
    ):
        load_split(name, split, DataConfig(), tmp_path / name)


@pytest.mark.parametrize("name", ["svhn", "cifar10"])
def test_files_failing_torchvisions_md5_are_reported_as_corrupt(tmp_path, name):
    write_acquired(name, tmp_path / name)
    with pytest.raises(DataError, match=r"md5 against the official release, found corrupt or truncated"):
        load_split(name, "train", DataConfig(), tmp_path / name)


def test_corrupt_usps_file_is_reported_with_its_folder(tmp_path):
    write_acquired("usps", tmp_path / "usps")
    (tmp_path / "usps" / "usps.bz2").write_bytes(b"not bz2 at all")
    with pytest.raises(DataError, match=r"usps'.*USPS files for the train split, found corrupt or truncated"):
        load_split("usps", "train", DataConfig(), tmp_path / "usps")


@pytest.mark.parametrize("name", TV_WRITERS)
def test_torchvision_dataset_without_local_dir_or_download_names_both_ways_and_leaves_nothing(tmp_path, name):
    with pytest.raises(
        DataError,
        match=rf"data.local_dirs.{name} or data.download: expected .*found no folder and download false",
    ):
        acquire(name, DataConfig(download=False), tmp_path / "raw" / name)
    assert list((tmp_path / "raw").iterdir()) == []


@pytest.mark.usefixtures("accept_any_md5")
@pytest.mark.parametrize("name", TV_WRITERS)
def test_acquire_from_local_dir_copies_the_layout_without_downloading_and_loads_both_splits(tmp_path, name):
    expected = tv_expected(name)
    TV_WRITERS[name](tmp_path / "local", expected)
    (tmp_path / "local" / "unrelated.txt").write_text("not part of the dataset")
    # download: true too: the local folder must win, and the autouse no_network fixture fails any download
    cfg = DataConfig(download=True, local_dirs={name: str(tmp_path / "local")})
    manifest = acquire(name, cfg, tmp_path / "raw" / name)
    local_files = {
        str(p.relative_to(tmp_path / "local")) for p in (tmp_path / "local").rglob("*") if p.is_file()
    }
    assert set(manifest) == local_files - {"unrelated.txt"}
    for split in ("train", "test"):
        assert_split_is(load_split(name, split, cfg, tmp_path / "raw" / name), expected[split], name)


@pytest.mark.parametrize(
    "name, gone",
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("usps", "usps.t.bz2"),
        ("svhn", "test_32x32.mat"),
        ("cifar10", "cifar-10-batches-py/data_batch_3"),
    ],
)
def test_missing_file_in_local_dir_names_field_folder_and_file_and_leaves_nothing(tmp_path, name, gone):
    TV_WRITERS[name](tmp_path / "local", tv_expected(name))
    (tmp_path / "local" / gone).unlink()
    cfg = DataConfig(local_dirs={name: str(tmp_path / "local")})
    folder = re.escape(str(tmp_path / "local"))
    with pytest.raises(
        DataError,
        match=rf"data.local_dirs.{name} '{folder}': expected .*{re.escape(gone)}.*found \['{gone}'\] missing",
    ):
        acquire(name, cfg, tmp_path / "raw" / name)
    assert list((tmp_path / "raw").iterdir()) == []


def test_local_dir_that_does_not_exist_is_named_as_a_folder_and_leaves_nothing(tmp_path):
    cfg = DataConfig(local_dirs={"mnist": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match=r"data.local_dirs.mnist: expected a folder .*found nothing at"):
        acquire("mnist", cfg, tmp_path / "raw" / "mnist")
    assert list((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("key", ["fashion_mnist", "digits", "mnsit"])
def test_local_dirs_key_that_is_not_a_torchvision_dataset_is_a_config_error(key, tiny_params):
    tiny_params["data"]["local_dirs"] = {key: "/somewhere"}
    with pytest.raises(
        ConfigError,
        match=rf"data.local_dirs.{key}: unknown value '{key}'.*"
        r"expected one of \['cifar10', 'mnist', 'svhn', 'usps'\]",
    ):
        params_from_dict(tiny_params)


def test_local_dirs_naming_torchvision_datasets_is_valid_config():
    cfg = from_dict(DataConfig, {"local_dirs": {"mnist": "/a", "cifar10": "/b"}}, "data")
    assert cfg.local_dirs == {"mnist": "/a", "cifar10": "/b"}


@pytest.mark.parametrize("name", TV_WRITERS)
def test_failed_download_is_a_data_error_and_leaves_nothing(tmp_path, name):
    with pytest.raises(DataError, match=r"download failed.*network disabled in tests.*check network access"):
        acquire(name, DataConfig(download=True), tmp_path / "raw" / name)
    assert list((tmp_path / "raw").iterdir()) == []


def test_failed_fashion_mnist_download_is_a_data_error_and_leaves_nothing(tmp_path):
    cfg = DataConfig(download=True, fashion_mnist_dir=str(tmp_path / "absent"))
    with pytest.raises(
        DataError, match=r"^dataset FashionMNIST: .*download failed.*network disabled in tests"
    ):
        acquire("fashion_mnist", cfg, tmp_path / "raw" / "fashion_mnist")
    assert list((tmp_path / "raw").iterdir()) == []


class ServedFile(io.BytesIO):
    """What urlopen returns, enough for torchvision's download code."""

    def __init__(self, url, content):
        super().__init__(content)
        self.url, self.length = url, len(content)


def release_files(name, src):
    """The files torchvision downloads, by URL basename, made from a folder in the on-disk layout."""
    if name == "mnist":
        return {f"{p.name}.gz": gzip.compress(p.read_bytes()) for p in (src / "MNIST" / "raw").iterdir()}
    if name == "cifar10":
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        return {"cifar-10-python.tar.gz": archive.getvalue()}
    return {p.name: p.read_bytes() for p in src.iterdir()}


@pytest.mark.usefixtures("accept_any_md5")
@pytest.mark.parametrize("name", TV_WRITERS)
def test_acquire_with_download_writes_the_layout_the_loader_reads(tmp_path, name, monkeypatch):
    expected = tv_expected(name)
    TV_WRITERS[name](tmp_path / "src", expected)
    served = release_files(name, tmp_path / "src")

    def urlopen(request, *args, **kwargs):
        return ServedFile(
            request.full_url, served[urllib.parse.urlparse(request.full_url).path.rsplit("/", 1)[-1]]
        )

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    cfg = DataConfig(download=True)
    manifest = acquire(name, cfg, tmp_path / "raw" / name)
    assert set(served) <= {path.rsplit("/", 1)[-1] for path in manifest}
    for split in ("train", "test"):
        assert_split_is(load_split(name, split, cfg, tmp_path / "raw" / name), expected[split], name)
