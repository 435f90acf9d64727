"""uint8 conversion as saved PNGs, seeded latents, reproducible and batch-independent sampling."""

import io

import numpy as np
import pytest
import torch
from metrics_helpers import Z_DIM, TinyGenerator, tiny_extractor
from PIL import Image

from stylenat.metrics import generator_features, to_uint8, z_from_seeds
from stylenat.metrics.distributed import shard


def test_to_uint8_stylegan_convention():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 0.996, 1.0, 2.0]).view(1, 1, 1, 8).expand(1, 3, 1, 8)
    # (x * 127.5 + 128) truncated: -1 -> 0.5 -> 0, 0 -> 128, 1 -> 255.5 -> 255; out of range clamps.
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 0, 128, 191, 254, 255, 255]
    assert to_uint8(x).dtype == torch.uint8
    with pytest.raises(ValueError, match="float"):
        to_uint8(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


def test_to_uint8_equals_a_png_round_trip():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    u8 = to_uint8(images)
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="png")
        reloaded = np.array(Image.open(io.BytesIO(buf.getvalue())))
        np.testing.assert_array_equal(reloaded, img.permute(1, 2, 0).numpy())


def test_z_from_seeds_matches_stylegan_generate():
    z = z_from_seeds([0, 42], 512)
    assert z.shape == (2, 512) and z.dtype == torch.float32
    np.testing.assert_array_equal(z[1].numpy(), np.random.RandomState(42).randn(512).astype(np.float32))
    with pytest.raises(ValueError, match="seeds must lie"):
        z_from_seeds([-1], 4)


def test_shards_cover_everything_once():
    for n, world in ((10, 3), (2, 4), (7, 1), (12, 4)):
        parts = [shard(n, r, world) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))


def test_generator_features_reproducible_and_batch_independent():
    gen, ext = TinyGenerator(), tiny_extractor()
    kwargs = dict(num_samples=11, z_dim=Z_DIM, verbose=False)
    a = generator_features(gen, ext, seed=5, batch_size=4, **kwargs)
    b = generator_features(gen, ext, seed=5, batch_size=11, **kwargs)
    c = generator_features(gen, ext, seed=6, batch_size=4, **kwargs)
    assert a.shape == (11, 8)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a[1:], c[:-1], rtol=1e-6, atol=1e-7)  # sample i uses seed `seed + i`
    assert not np.allclose(a[0], c[0])


def test_generator_output_is_checked():
    with pytest.raises(ValueError, match=r"expected \[B, 3, H, W\]"):
        generator_features(lambda z: torch.zeros(len(z), 16, 16), tiny_extractor(), num_samples=2, z_dim=4,
                           verbose=False)
    with pytest.raises(ValueError, match="16x16 images, but the reference statistics are for 256x256"):
        generator_features(TinyGenerator(), tiny_extractor(), num_samples=2, z_dim=Z_DIM, resolution=256,
                           verbose=False)
