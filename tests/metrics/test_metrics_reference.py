"""Reference statistics: named-stats validation and offline lookup; the dataset cache and its invalidation."""

import os
import zipfile

import numpy as np
import pytest
import torch
from metrics_helpers import RES, random_images, tiny_extractor, write_pngs
from PIL import Image

from stylenat.metrics import (ImageFiles, dataset_features, dataset_reference_stats, feature_stats,
                              fingerprint_path, named_reference_stats, path_reference_stats, stats_cache_dir)
from stylenat.metrics import weights
from stylenat.metrics.datasets import collate_images


class CountingExtractor:
    """Wraps an extractor and counts the images it sees."""

    def __init__(self, inner):
        self.inner, self.seen = inner, 0
        self.name, self.mode, self.feature_dim = inner.name, inner.mode, inner.feature_dim
        self.network = inner.network  # its weights key the cache

    def __call__(self, images):
        self.seen += len(images)
        return self.inner(images)


@pytest.mark.parametrize("name,res,split,expected", [
    ("ffhq", 256, "train", r"ffhq 256 has splits trainval, trainval70k, not 'train'"),
    ("ffhq", 512, "trainval", r"resolutions \[256, 1024\], not 512"),
    ("lsun_church", 256, "trainval70k", "train, trainfull"),
    ("celeba", 256, "train", "available: ffhq 256: trainval, trainval70k; ffhq 1024: .*; lsun_church 256: train"),
])
def test_named_stats_validation(name, res, split, expected):
    with pytest.raises(ValueError, match=expected):
        named_reference_stats(name, res, split)


def test_named_stats_bad_mode():
    with pytest.raises(ValueError, match="unknown clean-fid mode"):
        named_reference_stats("ffhq", 256, "trainval70k", mode="clean_fid")


def test_named_stats_offline_error_names_the_file_and_the_folder():
    with pytest.raises(FileNotFoundError) as e:
        named_reference_stats("ffhq", 1024, "trainval", mode="legacy_tensorflow")
    message = str(e.value)
    assert "ffhq_legacy_tensorflow_trainval_1024.npz" in message
    assert str(stats_cache_dir() / "cleanfid") in message
    assert "https://www.cs.cmu.edu/~clean-fid/stats/ffhq_legacy_tensorflow_trainval_1024.npz" in message


def test_named_stats_from_our_cache_and_download(monkeypatch):
    folder = stats_cache_dir() / "cleanfid"
    folder.mkdir(parents=True)
    np.savez(folder / "ffhq_clean_trainval70k_256.npz", mu=np.arange(3.0), sigma=np.eye(3))
    ref = named_reference_stats("ffhq", 256, "trainval70k")
    assert ref.label == "ffhq_256_trainval70k" and ref.features is None
    assert (ref.extractor, ref.mode, ref.resolution) == ("inception_v3", "clean", 256)
    np.testing.assert_array_equal(ref.mu, [0, 1, 2])

    fetched = []

    def fake_download(url, dst):
        fetched.append(url)
        with open(dst, "wb") as f:
            np.savez(f, mu=np.zeros(2), sigma=np.eye(2))

    monkeypatch.setattr(weights, "network_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert named_reference_stats("ffhq", 1024, "trainval").mu.shape == (2,)
    assert fetched == ["https://www.cs.cmu.edu/~clean-fid/stats/ffhq_clean_trainval_1024.npz"]
    assert (folder / "ffhq_clean_trainval_1024.npz").is_file()


def test_dataset_stats_cached_then_invalidated_when_a_file_changes(tmp_path):
    folder = write_pngs(tmp_path / "real", random_images(10, seed=0))
    ext = CountingExtractor(tiny_extractor())
    first = path_reference_stats(folder, extractor=ext, resolution=RES, batch_size=4, verbose=False)
    assert ext.seen == 10 and first.features.shape == (10, 8) and first.num_images == 10
    assert first.label.startswith("dataset-") and first.source == str(folder)
    cached = list(stats_cache_dir().glob("*.npz"))
    assert len(cached) == 1 and not list(stats_cache_dir().glob("*.tmp"))  # the temp file was renamed

    again = path_reference_stats(folder, extractor=ext, resolution=RES, verbose=False)
    assert ext.seen == 10  # nothing recomputed
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.features, first.features)

    Image.fromarray(random_images(1, seed=99)[0]).save(folder / "img0003.png")
    os.utime(folder / "img0003.png", ns=(1, 1))
    changed = path_reference_stats(folder, extractor=ext, resolution=RES, verbose=False)
    assert ext.seen == 20
    assert not np.allclose(changed.mu, first.mu)
    assert changed.label != first.label and len(list(stats_cache_dir().glob("*.npz"))) == 2

    other_mode = CountingExtractor(tiny_extractor("legacy_pytorch"))
    path_reference_stats(folder, extractor=other_mode, resolution=RES, verbose=False)
    assert other_mode.seen == 10  # the mode is part of the key


def test_builtin_dataset_stats_keyed_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder called "digits" here: the name means the built-in dataset
    ext = CountingExtractor(tiny_extractor())
    stats = path_reference_stats("digits", extractor=ext, resolution=RES, batch_size=256, verbose=False)
    assert ext.seen == 1797 and stats.num_images == 1797 and stats.source == "digits"
    (cached,) = stats_cache_dir().glob("*.npz")
    assert cached.name.startswith("builtin-digits-lanczos-")
    path_reference_stats("digits", extractor=ext, resolution=RES, verbose=False)
    assert ext.seen == 1797  # reused


def test_zip_dataset_and_fingerprint(tmp_path):
    images = random_images(5, seed=1)
    folder = write_pngs(tmp_path / "imgs", images)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"sub/{p.name}")
        zf.writestr("dataset.json", "{}")
    data = ImageFiles(archive)
    assert len(data) == 5 and data[2].dtype == torch.uint8
    np.testing.assert_array_equal(data[2].permute(1, 2, 0).numpy(), images[2])
    fp = fingerprint_path(archive)
    os.utime(archive, ns=(5, 5))
    assert fingerprint_path(archive) == fp  # a zip is fingerprinted by member CRCs, not its mtime
    assert fingerprint_path(folder, content=True) != fingerprint_path(folder)
    ext = tiny_extractor()
    np.testing.assert_allclose(dataset_features(ImageFiles(archive), ext, verbose=False),
                               dataset_features(ImageFiles(folder), ext, verbose=False), rtol=1e-6)


def test_plain_iterables_and_labelled_items():
    images = torch.from_numpy(random_images(7, seed=2)).permute(0, 3, 1, 2)
    ext = tiny_extractor()
    expected = ext(images).numpy()
    as_list = [(img, 0) for img in images]  # (image, label) items, map-style
    as_stream = (img.numpy() for img in images)  # an iterable without len
    np.testing.assert_allclose(dataset_features(as_list, ext, batch_size=3, verbose=False), expected, rtol=1e-6)
    np.testing.assert_allclose(dataset_features(as_stream, ext, batch_size=3, verbose=False), expected, rtol=1e-6)
    np.testing.assert_allclose(dataset_features(as_list, ext, max_items=4, verbose=False), expected[:4], rtol=1e-6)
    stats = dataset_reference_stats(as_list, extractor=ext, fingerprint="abc123", resolution=RES, verbose=False)
    np.testing.assert_allclose(stats.mu, feature_stats(expected)[0], rtol=1e-6)


def test_float_items_in_the_data_package_convention_are_read_back_exactly():
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 16, 256).contiguous()
    as_float = u8.float() / 127.5 - 1  # how stylenat.data's datasets serve images
    ext = tiny_extractor()
    np.testing.assert_array_equal(dataset_features([(as_float, 0)] * 2, ext, verbose=False),
                                  dataset_features([u8] * 2, ext, verbose=False))
    assert torch.equal(collate_images([as_float]), u8[None])


def test_dataset_errors(tmp_path):
    ext = tiny_extractor()
    with pytest.raises(ValueError, match="expected 32x32"):
        dataset_features([torch.zeros(3, RES, RES, dtype=torch.uint8)] * 2, ext, resolution=32, verbose=False)
    with pytest.raises(ValueError, match=r"uint8 in \[0, 255\] or float in \[-1, 1\]"):
        dataset_features([torch.zeros(3, RES, RES, dtype=torch.int16)] * 2, ext, verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFiles(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="broken.png"):
        ImageFiles(tmp_path / "bad")[0]
