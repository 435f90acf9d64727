"""The built-in ``digits`` dataset: real scans, labels, fixed splits, any resolution."""

from __future__ import annotations

import pytest
import torch

from stylenat.data import DigitsDataset, dataset_kind, open_dataset


@pytest.fixture(scope="module")
def digits() -> DigitsDataset:
    return open_dataset("digits", 32, use_labels=True)


@pytest.fixture(scope="module")
def images(digits) -> torch.Tensor:
    return torch.stack([digits[i][0] for i in range(len(digits))])  # [1797, 3, 32, 32]


def test_size_labels_and_classes(digits):
    assert dataset_kind("digits") == "builtin" and isinstance(digits, DigitsDataset)
    assert len(digits) == 1797 and digits.num_classes == 10 and digits.classes == [str(d) for d in range(10)]
    counts = torch.bincount(torch.tensor(digits.labels))
    assert counts.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_images_are_grey_rgb_in_range(images):
    assert images.shape == (1797, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() <= 1.0 and images.max() > 0.9
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])


def test_content_is_real_handwriting(digits, images):
    mean = images.mean(0)[0]
    assert mean.std() > 0.2  # ink concentrates in the middle: the mean image is not flat
    assert mean[12:20, 12:20].mean() > mean[:, :3].mean() + 0.5
    labels = torch.tensor(digits.labels)
    class_means = torch.stack([images[labels == d].mean(0) for d in range(10)]).flatten(1)
    nearest = torch.cdist(images.flatten(1), class_means).argmin(1)
    assert (nearest == labels).float().mean() > 0.7  # a nearest-class-mean classifier already works


def test_splits_are_fixed_disjoint_and_stratified(digits):
    train, test = (DigitsDataset(32, split=s, use_labels=True) for s in ("train", "test"))
    assert (len(train), len(test)) == (1438, 359)
    train_ids, test_ids = set(train._items), set(test._items)
    assert not train_ids & test_ids and len(train_ids | test_ids) == 1797
    assert sorted(set(test.labels)) == list(range(10))
    assert torch.bincount(torch.tensor(test.labels)).min() >= 34
    again = DigitsDataset(32, split="test")
    assert again._items == test._items
    torch.testing.assert_close(test[5][0], digits[test._items[5]][0])


def test_any_resolution_and_bad_split():
    dataset = open_dataset("digits", 64, split="test", filter="bicubic")
    with pytest.warns(UserWarning, match=r"upscaling images smaller than the resolution 64.*\(32x32\)"):
        assert dataset[0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="digits split must be one of"):
        open_dataset("digits", 32, split="val")
