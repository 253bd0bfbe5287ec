"""Photo-sized targets: image folders stored at 224x224 as uint8, and every stage feeding them to
the network in bounded batches (evaluation batches, training micro-batches)."""

import copy

import pytest
import torch
from PIL import Image

import kshot.finetune as finetune
from kshot.config import DataConfig, FinetuneConfig
from kshot.data.datasets import acquire, load_split
from kshot.data.prepare import to_geometry
from kshot.errors import ConfigError, DataError
from kshot.finetune import images_per_batch, predict, train
from kshot.methods import METHODS
from tests.test_methods import episode

CPU = torch.device("cpu")


def photo_tree(root, classes=("mug", "pen", "cup"), per_class=3):
    """Office-31-like: one folder per class, JPEG and PNG photos of several sizes."""
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = 120 + 40 * i, 90 + 30 * c
            pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_an_image_folder_is_stored_at_the_configured_side_as_uint8(tmp_path):
    tree = photo_tree(tmp_path / "office")
    cfg = DataConfig(image_folders={"office": str(tree)}, image_folder_side=224)
    acquire("office", cfg, tmp_path / "raw" / "office")
    train_split = load_split("office", "train", cfg, tmp_path / "raw" / "office")
    test_split = load_split("office", "test", cfg, tmp_path / "raw" / "office")
    assert train_split.images.dtype == torch.uint8 and train_split.images.shape[1:] == (3, 224, 224)
    assert len(train_split.labels) + len(test_split.labels) == 9
    assert sorted(set(train_split.labels.tolist()) | set(test_split.labels.tolist())) == [0, 1, 2]


def test_a_corrupt_photo_is_an_error_naming_the_file_with_nothing_written(tmp_path):
    tree = photo_tree(tmp_path / "office")
    (tree / "pen" / "broken.jpg").write_bytes(b"not a jpeg at all")
    cfg = DataConfig(image_folders={"office": str(tree)}, image_folder_side=224)
    with pytest.raises(DataError, match=r"image file '.*broken.jpg': expected a readable image"):
        acquire("office", cfg, tmp_path / "raw" / "office")
    assert not (tmp_path / "raw" / "office").exists()


def test_geometry_conversion_in_chunks_equals_one_pass_and_leaves_a_fitting_set_alone():
    images = torch.randint(0, 256, (7, 3, 40, 30), dtype=torch.uint8)
    assert torch.equal(to_geometry(images, 1, 24, chunk=2), to_geometry(images, 1, 24, chunk=256))
    assert to_geometry(images[:, :, :30], 3, 30) is not images
    square = images[:, :, :30, :30].contiguous()
    assert to_geometry(square, 3, 30) is square


def test_batches_hold_at_most_the_budget_and_small_images_keep_256():
    assert images_per_batch(torch.zeros(1000, 1, 28, 28), finetune.EVAL_ELEMENTS) == 256
    photos = torch.zeros(10, 3, 224, 224)
    assert images_per_batch(photos, finetune.EVAL_ELEMENTS) * 3 * 224 * 224 <= finetune.EVAL_ELEMENTS
    assert images_per_batch(photos, finetune.TRAIN_ELEMENTS, cap=10) == 10 or (
        images_per_batch(photos, finetune.TRAIN_ELEMENTS, cap=10) * 3 * 224 * 224 <= finetune.TRAIN_ELEMENTS
    )
    images = torch.randint(0, 256, (9, 1, 28, 28), dtype=torch.uint8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))
    assert torch.allclose(predict(model, images, CPU, batch_size=2), predict(model, images, CPU))


def make(kind, **options):
    cls = METHODS[kind]
    return cls(cls.parse_options(options, f"methods.{kind}"), FinetuneConfig(steps=4, eval_every=2, lr=0.05))


@pytest.mark.parametrize(
    "kind,options",
    [("full", {}), ("l2sp", {"alpha": 0.1}), ("grouped", {"groups": 0.5}), ("bitfit", {})],
)
def test_micro_batches_give_the_whole_support_sets_run(tiny_model, monkeypatch, kind, options):
    ep = episode(tiny_model, k=4)  # 12 support images of 1x28x28
    whole = make(kind, **options).run(copy.deepcopy(ep))
    monkeypatch.setattr(finetune, "TRAIN_ELEMENTS", 5 * 28 * 28)  # micro-batches of 5, 5 and 2
    assert len(finetune.micro_batches(ep.support, [], FinetuneConfig())) == 3
    split = make(kind, **options).run(copy.deepcopy(ep))
    for (s1, a), (s2, b) in zip(whole.loss_curve, split.loss_curve, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert split.val_curve == whole.val_curve


def test_whole_batch_terms_refuse_micro_batches_naming_what_needs_the_batch(tiny_model, monkeypatch):
    ep = episode(tiny_model, k=4)
    monkeypatch.setattr(finetune, "TRAIN_ELEMENTS", 5 * 28 * 28)
    with pytest.raises(
        ConfigError, match=r"^finetune: the support set of 12 images of 1x28x28 .*SpectralShrink"
    ):
        make("bss").run(copy.deepcopy(ep))
    model = copy.deepcopy(ep.model)
    cfg = FinetuneConfig(steps=2, eval_every=1, triplet_weight=0.1)
    with pytest.raises(ConfigError, match=r"micro-batches of 5 .*the triplet term"):
        train(model, list(model.parameters()), ep.support, ep.val, cfg, CPU)
