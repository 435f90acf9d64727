"""What makes a number comparable with a published one: the stylenat-paper protocol and its random reference
subset, fid50k vs fid50k_full and reference counts, the resize-filter warning, natural file order, metrics
in strict float32, legacy-mode named statistics, and statistics cached by the extractor's weights."""

import hashlib
import warnings

import numpy as np
import pytest
import torch
from metrics_helpers import RES, Z_DIM, TinyGenerator, random_images, tiny_extractor, write_pngs

from stylenat.data import prepare
from stylenat.data.prepare import prepared_filter
from stylenat.metrics import (INCEPTION, ImageFiles, dataset_features, extractor_digest, generator_features,
                              metric_name, named_reference_stats, parse_reference_name, path_reference_stats,
                              resolve_protocol, stats_cache_dir, strict_float32, warn_if_filters_differ)
from stylenat.metrics.reference import ReferenceStats


def test_protocol_settings_and_contradictions():
    default = resolve_protocol(None)
    assert (default.protocol, default.mode, default.num_samples, default.truncation, default.ref_subset) == \
        (None, "clean", 50_000, 1.0, None)
    paper = resolve_protocol("stylenat-paper")
    assert (paper.mode, paper.num_samples, paper.truncation, paper.ref_subset, paper.ref_subset_seed) == \
        ("legacy_pytorch", 50_000, 1.0, 50_000, 0)
    smaller = resolve_protocol("stylenat-paper", num_samples=100, ref_subset=100, ref_subset_seed=3,
                               mode="legacy_pytorch", truncation=1.0)
    assert (smaller.num_samples, smaller.ref_subset, smaller.ref_subset_seed) == (100, 100, 3)
    with pytest.raises(ValueError, match="--protocol stylenat-paper measures in mode legacy_pytorch, not clean: "
                                         "drop --mode"):
        resolve_protocol("stylenat-paper", mode="clean", cli=True)
    with pytest.raises(ValueError, match="samples at truncation 1, not 0.7: drop truncation"):
        resolve_protocol("stylenat-paper", truncation=0.7)
    with pytest.raises(ValueError, match=r"give the dataset \(--ref-data\) instead of named statistics \(--ref\)"):
        resolve_protocol("stylenat-paper", ref="ffhq:256:trainval70k", cli=True)
    with pytest.raises(ValueError, match="unknown protocol 'paper'; expected one of stylenat-paper"):
        resolve_protocol("paper")


def test_full_and_subset_names():
    assert metric_name("fd", INCEPTION, 50_000, full_reference=True) == "fid50k_full"
    assert metric_name("fd", INCEPTION, 50_000, full_reference=False) == "fid50k"
    assert metric_name("kd", INCEPTION, 10_000, full_reference=True) == "kid10k_full"
    assert metric_name("fd", "tiny", 48, full_reference=True) == "fd_tiny48"  # our own names: count recorded


@pytest.fixture
def real(tmp_path):
    return write_pngs(tmp_path / "real", random_images(24, seed=0))


def test_random_reference_subset_is_seeded_recorded_and_exact(real):
    extractor = tiny_extractor()
    ref = path_reference_stats(real, extractor=extractor, resolution=RES, subset=10, subset_seed=0, batch_size=4)
    indices = np.sort(np.random.default_rng(0).choice(24, 10, replace=False))
    images = ImageFiles(real)
    expected = dataset_features([images[int(i)] for i in indices], extractor)
    np.testing.assert_array_equal(ref.features, expected)
    assert ref.num_images == 10 and not ref.covers_dataset
    assert ref.subset == {"size": 10, "seed": 0,
                          "fingerprint": hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest()[:16]}
    other = path_reference_stats(real, extractor=extractor, resolution=RES, subset=10, subset_seed=1, batch_size=4)
    assert other.subset["fingerprint"] != ref.subset["fingerprint"] and other.label != ref.label
    full = path_reference_stats(real, extractor=extractor, resolution=RES, batch_size=4)
    assert full.covers_dataset and full.num_images == 24 and full.subset is None
    assert len(list(stats_cache_dir().glob("*.npz"))) == 3
    with pytest.raises(ValueError, match="a random subset of 30 reference images needs a dataset of at least that "
                                         "many; this one has 24"):
        path_reference_stats(real, extractor=extractor, resolution=RES, subset=30)


def test_statistics_cache_is_keyed_by_the_extractor_weights(real):
    first = tiny_extractor()
    retrained = tiny_extractor()  # same name and mode, other weights
    with torch.no_grad():
        retrained.network.conv.weight.mul_(1.5)
    assert extractor_digest(first) == extractor_digest(tiny_extractor()) != extractor_digest(retrained)
    a = path_reference_stats(real, extractor=first, resolution=RES)
    b = path_reference_stats(real, extractor=retrained, resolution=RES)
    assert not np.allclose(a.mu, b.mu)  # not served from the first extractor's cache entry
    assert len(list(stats_cache_dir().glob("*.npz"))) == 2


def test_statistics_of_an_extractor_without_a_network_are_never_cached(real):
    class Opaque:  # features from weights the digest cannot see: a cache entry could go stale under its name
        name, mode, feature_dim = "opaque", "clean", 3

        def __init__(self, scale):
            self.scale = scale

        def __call__(self, images):
            return images.float().mean(dim=(2, 3)) * self.scale

    assert extractor_digest(Opaque(1.0)) is None
    a = path_reference_stats(real, extractor=Opaque(1.0), resolution=RES)
    b = path_reference_stats(real, extractor=Opaque(2.0), resolution=RES)
    np.testing.assert_allclose(b.mu, 2 * a.mu)
    assert not list(stats_cache_dir().glob("*.npz"))


def test_named_statistics_state_their_image_count_and_filter():
    folder = stats_cache_dir() / "cleanfid"
    folder.mkdir(parents=True)
    for split in ("trainval70k", "trainval"):
        np.savez(folder / f"ffhq_legacy_pytorch_{split}_256.npz", mu=np.zeros(3), sigma=np.eye(3))
    full = named_reference_stats("ffhq", 256, "trainval70k", mode="legacy_pytorch")
    subset = named_reference_stats("ffhq", 256, "trainval", mode="legacy_pytorch")
    assert (full.num_images, full.covers_dataset, full.resize_filter) == (70_000, True, "box")
    assert (subset.num_images, subset.covers_dataset) == (50_000, False)


@pytest.mark.parametrize("mode", ["legacy_pytorch", "legacy_tensorflow"])
def test_church_trainfull_in_a_legacy_mode_fails_at_validation(mode):
    with pytest.raises(ValueError, match=f"lsun_church:256:trainfull statistics in clean mode only, not {mode}"):
        parse_reference_name("lsun_church:256:trainfull", 256, mode)
    with pytest.raises(ValueError, match="clean mode only"):  # before any lookup or download
        named_reference_stats("lsun_church", 256, "trainfull", mode=mode)
    assert parse_reference_name("lsun_church:256:trainfull", 256, "clean") == ("lsun_church", 256, "trainfull")


def test_resize_filter_is_read_back_and_a_mismatch_warns(tmp_path):
    src = write_pngs(tmp_path / "src", random_images(3, seed=0, res=32))
    zip_path = prepare(src, tmp_path / "box.zip", RES, filter="box", progress=False).path
    assert prepared_filter(zip_path) == "box" and prepared_filter(src) is None
    ref = ReferenceStats(np.zeros(2), np.eye(2), None, label="ffhq_256_trainval70k", extractor=INCEPTION,
                         mode="clean", resolution=256, resize_filter="box")
    with pytest.warns(UserWarning, match="resized with the 'lanczos' filter but the reference statistics "
                                         "'ffhq_256_trainval70k' come from 'box'-resized images"):
        assert warn_if_filters_differ("lanczos", ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_filters_differ("box", ref) and not warn_if_filters_differ(None, ref)


def test_image_files_in_natural_order(tmp_path):
    images = random_images(4, seed=0)
    for name, img in zip(["seed10000.png", "seed9999.png", "seed0002.png", "seed0010.png"], images):
        write_pngs(tmp_path / "x", img[None], prefix=name[:-4] + "_")
    names = [n.split("_")[0] for n in ImageFiles(tmp_path / "x").names]
    assert names == ["seed0002", "seed0010", "seed9999", "seed10000"]


def test_metrics_run_without_tf32_and_restore_it():
    seen = []
    generator = TinyGenerator()

    def spy(z):
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
        return generator(z)

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")  # what allow_tf32 training leaves behind
    torch.backends.cudnn.allow_tf32 = True
    try:
        generator_features(spy, tiny_extractor(), num_samples=4, z_dim=Z_DIM, batch_size=2)
        assert seen == [("highest", False)] * 2
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
        with pytest.raises(RuntimeError), strict_float32():
            raise RuntimeError("boom")
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
