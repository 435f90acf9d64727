"""Folder / zip / LMDB datasets: shapes, value range, transform, x-flip, labels, bad data, factory errors."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import encode, noise_image, truncated_png, write_lmdb, write_zip
from PIL import Image
from torch.utils.data import DataLoader

from stylenat.data import (
    BadImageWarning,
    ImageFolderDataset,
    LSUNDataset,
    UnreadableImageError,
    ZipDataset,
    dataset_kind,
    open_dataset,
)
from stylenat.data.transforms import to_tensor


def check_images(dataset, resolution: int) -> None:
    for i in range(len(dataset)):
        image = dataset[i]
        assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0


# -- formats ------------------------------------------------------------------------------------------


def test_folder_is_recursive_over_all_extensions(image_folder):
    dataset = open_dataset(image_folder, 16)
    assert isinstance(dataset, ImageFolderDataset) and dataset_kind(image_folder) == "folder"
    names = sorted(dataset.where(i).split("images/")[1] for i in range(len(dataset)))
    assert names == ["a/deeper/x1.jpg", "a/x0.png", "b/x2.jpeg", "b/x3.webp", "x4.bmp", "x5.PNG"]
    assert dataset.labels is None
    check_images(dataset, 16)


@pytest.mark.parametrize("with_json", [True, False])
def test_zip_with_and_without_dataset_json(stylegan_zip, tmp_path, with_json):
    path = stylegan_zip
    if not with_json:
        with zipfile.ZipFile(stylegan_zip) as src:
            path = write_zip(tmp_path / "plain.zip", {n: src.read(n) for n in src.namelist() if n.endswith(".png")})
    check_images(open_dataset(path, 16), 16)
    dataset = open_dataset(path, 16, use_labels=with_json)
    assert isinstance(dataset, ZipDataset) and len(dataset) == 5
    if with_json:
        assert dataset.labels == [0, 1, 2, 0, 1] and dataset.num_classes == 3
        image, label = dataset[4]
        assert image.shape == (3, 16, 16) and label == 1
    else:
        assert dataset.labels is None
        with pytest.raises(ValueError, match="has no labels"):
            open_dataset(path, 16, use_labels=True)


def test_zip_pixels_are_the_stored_pngs(stylegan_zip):
    dataset = open_dataset(stylegan_zip, 16)
    torch.testing.assert_close(dataset[2], to_tensor(noise_image(2, (16, 16))), rtol=0, atol=0)


def test_lsun_lmdb(lsun_lmdb):
    dataset = open_dataset(lsun_lmdb, 8)
    assert isinstance(dataset, LSUNDataset) and dataset_kind(lsun_lmdb) == "lmdb" and len(dataset) == 4
    check_images(dataset, 8)
    assert len(open_dataset(lsun_lmdb / "data.mdb", 8)) == 4  # the data file names the same LMDB


def test_datasets_work_in_forked_workers(stylegan_zip, lsun_lmdb):
    for dataset in (open_dataset(stylegan_zip, 16), open_dataset(lsun_lmdb, 8)):
        dataset[0]  # open the handle in this process first: workers must not reuse it
        batches = list(DataLoader(dataset, batch_size=2, num_workers=2))
        assert torch.cat(batches).shape[0] == dataset.num_images


def test_class_folders_give_labels(class_folder):
    dataset = open_dataset(class_folder, 16, use_labels=True)
    assert dataset.classes == ["cat", "dog", "owl"] and dataset.num_classes == 3
    assert sorted(dataset.labels) == [0] * 10 + [1] * 10 + [2] * 10
    for i in (0, 15, 29):
        assert dataset[i][1] == dataset.labels[i]
        assert f"/{dataset.classes[dataset.labels[i]]}/" in dataset.where(i)


def test_class_folders_reject_loose_images(image_folder):
    with pytest.raises(ValueError, match="outside class sub-folders.*x4.bmp"):
        open_dataset(image_folder, 16, use_labels=True)
    with pytest.raises(ValueError, match="has no labels"):
        ImageFolderDataset(image_folder, 16, use_labels=True)


def test_dataset_json_with_vector_labels_is_rejected(tmp_path):
    path = write_zip(tmp_path / "v.zip", {"a.png": encode(noise_image(0))}, labels=[["a.png", [0.5, 0.5]]])
    with pytest.raises(ValueError, match="only integer class labels"):
        ZipDataset(path, 16)


# -- transform ----------------------------------------------------------------------------------------


def test_value_range_endpoints(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:, 4:] = 255
    Image.fromarray(pixels).save(tmp_path / "half.png")
    image = open_dataset(tmp_path, 8)[0]
    assert (image[:, :, :4] == -1).all() and (image[:, :, 4:] == 1).all()


def test_xflip_doubles_with_mirrored_copies(image_folder):
    plain = open_dataset(image_folder, 16)
    flipped = open_dataset(image_folder, 16, xflip=True)
    n = len(plain)
    assert len(flipped) == 2 * n and flipped.num_images == n
    for i in range(n):
        torch.testing.assert_close(flipped[i], plain[i], rtol=0, atol=0)
        torch.testing.assert_close(flipped[i + n], plain[i].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(flipped[-1], flipped[2 * n - 1])
    with pytest.raises(IndexError):
        flipped[2 * n]


def test_center_crop_keeps_the_middle_square(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)  # height 40, width 60
    pixels[:, 10:50] = 255  # the centred 40x40 square is white, the 10-px side bands black
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = open_dataset(tmp_path, 20, filter="box")[0]
    assert (image == 1).all()


def test_non_square_without_center_crop_is_rejected_naming_the_file(tmp_path):
    noise_image(0, (30, 20)).save(tmp_path / "wide.png")
    dataset = open_dataset(tmp_path, 16, center_crop=False)
    with pytest.raises(ValueError, match=r"wide\.png.*30x20, not square"):
        dataset[0]


def test_box_filter_downsampling_is_average_pooling(tmp_path):
    noise_image(3, (64, 64)).save(tmp_path / "big.png")
    image = open_dataset(tmp_path, 16, filter="box")[0]
    expected = F.avg_pool2d(to_tensor(noise_image(3, (64, 64)))[None], 4)[0]
    torch.testing.assert_close(image, expected, rtol=0, atol=1.01 / 127.5)  # within one grey level


def test_filters_differ_and_unknown_filter_is_named(tmp_path):
    noise_image(3, (64, 64)).save(tmp_path / "big.png")
    box, lanczos = (open_dataset(tmp_path, 16, filter=f)[0] for f in ("box", "lanczos"))
    assert not torch.equal(box, lanczos)
    with pytest.raises(ValueError, match="unknown resize filter 'lanczoz'.*lanczos"):
        open_dataset(tmp_path, 16, filter="lanczoz")


# -- bad data -----------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_bad_files(image_folder):
    (image_folder / "a" / "broken.png").write_bytes(truncated_png())
    (image_folder / "b" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    return image_folder


def test_unreadable_images_are_skipped_and_reported_with_their_path(folder_with_bad_files):
    dataset = open_dataset(folder_with_bad_files, 16)
    assert len(dataset) == 8  # bad files are found when read, not at construction
    broken = next(i for i in range(8) if dataset.where(i).endswith("broken.png"))
    with pytest.warns(BadImageWarning, match=r"unreadable image .*a/broken\.png"):
        image = dataset[broken]
    torch.testing.assert_close(image, dataset[broken + 1])  # the next readable image stands in
    with pytest.warns(BadImageWarning, match=r"b/garbage\.jpg"):
        images = [dataset[i] for i in range(len(dataset))]
    assert all(x.shape == (3, 16, 16) for x in images)


def test_unreadable_images_raise_with_the_flag(folder_with_bad_files):
    dataset = open_dataset(folder_with_bad_files, 16, on_error="raise")
    with pytest.raises(UnreadableImageError, match=r"a/broken\.png.*truncated"):
        [dataset[i] for i in range(len(dataset))]


def test_bad_zip_member_and_lmdb_value_are_named(tmp_path):
    zip_path = write_zip(tmp_path / "d.zip", {"ok.png": encode(noise_image(0)), "bad.png": truncated_png()})
    with pytest.raises(UnreadableImageError, match=r"d\.zip:bad\.png"):
        ZipDataset(zip_path, 16, on_error="raise")[0]
    lmdb_path = write_lmdb(tmp_path / "l_lmdb", [encode(noise_image(i), "webp") for i in range(3)] + [truncated_png()])
    dataset = LSUNDataset(lmdb_path, 16, on_error="raise")
    with pytest.raises(UnreadableImageError, match=r"l_lmdb\[[0-9a-f]{40}\]"):
        [dataset[i] for i in range(len(dataset))]


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(truncated_png())
    with pytest.warns(BadImageWarning), pytest.raises(RuntimeError, match="none of its 1 images is readable"):
        open_dataset(tmp_path, 16)[0]


# -- construction errors ------------------------------------------------------------------------------


def test_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist.*built-in dataset: digits"):
        open_dataset(tmp_path / "nowhere", 16)


def test_empty_folder_and_empty_zip(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"'.*empty' holds no images"):
        open_dataset(tmp_path / "empty", 16)
    with pytest.raises(ValueError, match=r"empty\.zip' holds no images"):
        open_dataset(write_zip(tmp_path / "empty.zip", {"readme.txt": b"hi"}), 16)
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"fake\.zip' is not a readable zip"):
        open_dataset(tmp_path / "fake.zip", 16)


def test_lmdb_not_in_lsun_layout_and_empty_lmdb(foreign_lmdb, tmp_path):
    with pytest.raises(ValueError, match=r"features_lmdb' is not in LSUN's layout.*not an encoded image"):
        open_dataset(foreign_lmdb, 16)
    with pytest.raises(ValueError, match=r"empty_lmdb' is empty"):
        open_dataset(write_lmdb(tmp_path / "empty_lmdb", []), 16)


def test_unsupported_file_and_bad_arguments(tmp_path, image_folder):
    noise_image(0).save(tmp_path / "one.png")
    with pytest.raises(ValueError, match=r"one\.png' is a file but not a \.zip"):
        open_dataset(tmp_path / "one.png", 16)
    with pytest.raises(ValueError, match="split='train' applies to built-in datasets only"):
        open_dataset(image_folder, 16, split="train")
    with pytest.raises(ValueError, match="resolution must be a positive integer, got 0"):
        open_dataset(image_folder, 0)
    with pytest.raises(ValueError, match="on_error must be 'skip' or 'raise', got 'ignore'"):
        open_dataset(image_folder, 16, on_error="ignore")
