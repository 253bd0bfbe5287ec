"""Linear CKA (kshot.similarity) on matrices whose answer is known."""

import pytest
import torch

from kshot.errors import ConfigError
from kshot.similarity import label_cka, linear_cka


def gram_cka(x, y):
    """CKA in its kernel form, HSIC of centred Gram matrices (the paper's definition)."""
    n = len(x)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ (x.double() @ x.double().T) @ h, h @ (y.double() @ y.double().T) @ h
    return float((kx * ky).sum() / (kx.norm() * ky.norm()))


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling_but_not_to_other_maps():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(3.0 * x @ q, y) == pytest.approx(base, abs=1e-10)
    stretched = x * torch.tensor([10.0, 1, 1, 1, 1, 1], dtype=torch.float64)
    assert abs(linear_cka(stretched, y) - base) > 1e-3


def test_the_feature_space_form_equals_the_kernel_form_of_the_paper():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 40, generator=gen), torch.randn(30, 5, generator=gen)
    y = y + 0.5 * x[:, :5]
    assert linear_cka(x, y) == pytest.approx(gram_cka(x, y), abs=1e-10)


def test_label_cka_is_one_for_the_one_hot_labels_and_near_zero_for_unrelated_features():
    labels = torch.arange(4).repeat(100)
    assert label_cka(torch.nn.functional.one_hot(labels).float(), labels) == pytest.approx(1.0)
    noise = torch.randn(400, 20, generator=torch.Generator().manual_seed(3))
    assert label_cka(noise, labels) < 0.05
    informative = noise + 3.0 * torch.nn.functional.one_hot(labels, 20).float()
    assert label_cka(informative, labels) > 0.5


def test_a_constant_representation_has_cka_zero_and_bad_shapes_name_the_argument():
    assert linear_cka(torch.ones(10, 3), torch.randn(10, 2)) == 0.0
    with pytest.raises(ConfigError, match=r"^y: expected the same 10 images as x \(rows\), found 9"):
        linear_cka(torch.randn(10, 3), torch.randn(9, 3))
    with pytest.raises(ConfigError, match=r"^labels: expected one label per image \(10\)"):
        label_cka(torch.randn(10, 3), torch.zeros(9, dtype=torch.long))
