"""Generation helpers (seeds, grids, interpolation, videos), evaluation set-up and attention maps."""

import numpy as np
import pytest
import torch
from PIL import Image

from natten_ops import window_indices
from stylenat import attention_maps, generation, metrics
from stylenat.metrics import z_from_seeds
from stylenat.models.generator import create_generator


@pytest.fixture(scope="module")
def demo_G():
    torch.manual_seed(0)
    return create_generator("demo").eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Seeds


@pytest.mark.parametrize("text, seeds", [
    ("7", [7]),
    ("0-3", [0, 1, 2, 3]),
    ("0-2,42,100-101", [0, 1, 2, 42, 100, 101]),
    (" 5 , 1-2 ", [5, 1, 2]),          # order kept, spaces ignored
    ("3,1-4,3", [3, 1, 2, 4]),         # repeats dropped
    ("4294967295", [2**32 - 1]),
])
def test_parse_seeds(text, seeds):
    assert generation.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1-", "-3", "5-3", "1,,2", "1-2-3", "0x10", "4294967296", "1.5"])
def test_parse_seeds_rejects_malformed(text):
    with pytest.raises(ValueError, match="malformed seeds") as err:
        generation.parse_seeds(text)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Images, grids, interpolation


def test_synthesize_matches_the_generator_and_keeps_w_avg(demo_G):
    z = z_from_seeds([3, 4, 5], demo_G.z_dim)
    w_avg = demo_G.mapping.w_avg.clone()
    (ws, images), = generation.synthesize(demo_G, z, psi=0.5, batch_size=8)
    assert ws.shape == (3, demo_G.num_ws, demo_G.w_dim) and images.dtype == torch.uint8
    with torch.no_grad():
        expected = demo_G(z, psi=0.5)
    assert (images.int() - ((expected * 127.5 + 128).clamp(0, 255).to(torch.uint8)).int()).abs().max() <= 1
    assert torch.equal(demo_G.mapping.w_avg, w_avg)


def test_image_grid_layout():
    images = torch.arange(5, dtype=torch.uint8)[:, None, None, None].expand(5, 3, 2, 4).contiguous()
    grid = generation.image_grid(images)  # 3 columns, 2 rows of 2x4 tiles, 2 px grey gaps, the last cell grey
    assert grid.shape == (3, 2 * 4 + 2, 3 * 6 + 2) and grid.dtype == torch.uint8
    tiles = grid[:, 2:, 2:].unflatten(1, (2, 4)).unflatten(3, (3, 6))[:, :, :2, :, :4]  # [3, row, 2, col, 4]
    assert torch.equal(tiles.permute(1, 3, 0, 2, 4).flatten(0, 1)[:5], images)
    grey = torch.ones_like(grid, dtype=torch.bool)
    grey[:, 2:, 2:].unflatten(1, (2, 4)).unflatten(3, (3, 6))[:, :, :2, :, :4] = False
    grey[:, 6:8, 14:18] = True  # the empty sixth cell
    assert (grid[grey] == 128).all() and (grid[~grey] < 5).all()
    assert generation.image_grid(images, cols=5).shape == (3, 6, 32)


def test_slerp_ends_and_sphere():
    a, b = torch.randn(16, generator=torch.Generator().manual_seed(0)), torch.randn(16)
    path = generation.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b)
    unit = generation.slerp(a / a.norm(), b / b.norm(), torch.linspace(0, 1, 5))
    assert torch.allclose(unit.norm(dim=1), torch.ones(5), atol=1e-5)  # stays on the sphere


def test_interpolation_in_w_is_a_straight_line(demo_G):
    z = z_from_seeds([1, 2], demo_G.z_dim)
    ws = generation.interpolation_latents(demo_G, z[0], z[1], 3, space="w")
    assert ws.shape == (3, demo_G.num_ws, demo_G.w_dim)
    assert torch.allclose(ws[1], (ws[0] + ws[2]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 frames"):
        generation.interpolation_latents(demo_G, z[0], z[1], 1)


def test_write_video_falls_back_to_gif(tmp_path, monkeypatch):
    monkeypatch.delattr(generation.torchvision.io, "write_video", raising=False)
    frames = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    path = generation.write_video(frames, tmp_path / "clip", fps=10)
    assert path.name == "clip.gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 4


def test_save_latents(tmp_path, demo_G):
    z = z_from_seeds([0, 9], demo_G.z_dim)
    generation.save_latents(tmp_path / "l.npz", [0, 9], z, torch.zeros(2, 4, 5), trunc=0.7)
    with np.load(tmp_path / "l.npz") as f:
        assert f["seeds"].tolist() == [0, 9] and np.array_equal(f["z"], z.numpy()) and f["w"].shape == (2, 4, 5)
        assert '"trunc": 0.7' in str(f["meta"])


# ---------------------------------------------------------------------------------------------
# Evaluation set-up (errors only: the CLI tests run the whole path)


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "factory 'package.module:function'"),
    ("no_such_module_xyz:make", "cannot load the extractor factory"),
    ("stylenat.generation:no_such_function", "cannot load the extractor factory"),
])
def test_build_extractor_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        metrics.build_extractor(spec)


class _Extractor:
    name, mode, feature_dim = "tiny", "clean", 8

    def __call__(self, images):
        return torch.zeros(len(images), 8)


@pytest.mark.parametrize("ref, ref_data, resolution, message", [
    (None, None, 256, "exactly one"),
    ("ffhq:256:trainval70k", "data", 256, "exactly one"),
    ("ffhq256", None, 256, "NAME:RESOLUTION:SPLIT"),
    ("celeba:256:train", None, 256, "no named reference statistics 'celeba'"),
    ("ffhq:256:train", None, 256, "has splits trainval, trainval70k"),
    ("ffhq:256:trainval70k", None, 32, "images are 32x32"),
    ("ffhq:256:trainval70k", None, 256, "hold Inception features"),
])
def test_build_reference_errors(ref, ref_data, resolution, message):
    with pytest.raises(ValueError, match=message):
        metrics.build_reference(ref, ref_data, extractor=_Extractor(), resolution=resolution)


# ---------------------------------------------------------------------------------------------
# Attention maps


def test_hydra_attention_lookup(demo_G):
    attn = attention_maps.hydra_attention(demo_G, 32, block=1)
    assert attn is demo_G.synthesis.stages[3].blocks[1].attn
    with pytest.raises(ValueError, match=r"choose from \[8, 16, 32\]"):
        attention_maps.hydra_attention(demo_G, 4)
    with pytest.raises(ValueError, match="block must be 0 or 1"):
        attention_maps.hydra_attention(demo_G, 16, block=2)


@pytest.mark.parametrize("x, y", [(0, 31), (31, 0), (17, 30)])
def test_window_masks_follow_window_indices(demo_G, x, y):
    attn = attention_maps.hydra_attention(demo_G, 32)
    masks = attention_maps.window_masks(attn, 32, x, y)
    assert len(masks) == len(attn.pattern) == 2
    for mask, (kernel, dilation) in zip(masks, attn.pattern):
        keys, _ = window_indices(32, kernel, dilation)
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[keys[y][:, None], keys[x][None, :]] = True
        assert torch.equal(mask, expected) and mask[y, x] and mask.sum() == kernel * kernel


def test_window_masks_reject_queries_outside_the_map(demo_G):
    attn = attention_maps.hydra_attention(demo_G, 16)
    with pytest.raises(ValueError, match=r"outside the 16x16 map"):
        attention_maps.window_masks(attn, 16, 16, 0)


def test_attention_probabilities_reproduce_the_layer_output(demo_G):
    """The probabilities recomputed from the hooked qkv, applied to v, give the layer's attention output."""
    attn = attention_maps.hydra_attention(demo_G, 16, block=1)
    x, y = 15, 1
    store = {}
    handle = attn.proj.register_forward_pre_hook(lambda module, inputs: store.update(out=inputs[0].detach()))
    try:
        with attention_maps.capture_output(attn.qkv) as captured, torch.no_grad():
            demo_G(z_from_seeds([4], demo_G.z_dim))
    finally:
        handle.remove()
    probs = attention_maps.attention_probabilities(attn, captured["output"], 16, x, y)
    v = captured["output"][0].reshape(16, 16, 3, attn.num_heads, attn.head_dim)[:, :, 2]  # [H, W, heads, D]
    masks = attention_maps.window_masks(attn, 16, x, y)
    head = 0
    for p, mask in zip(probs, masks):
        assert torch.allclose(p.sum(dim=(1, 2)), torch.ones(len(p)))
        assert (p[:, ~mask] == 0).all()
        for h in range(len(p)):
            out = (p[h][..., None] * v[:, :, head]).sum(dim=(0, 1))
            assert torch.allclose(out, store["out"][0, y, x, head * attn.head_dim:(head + 1) * attn.head_dim],
                                  atol=1e-5)
            head += 1


def test_overlay_marks_only_the_window():
    image = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    weights = torch.zeros(4, 4)
    weights[1:3, 2] = 1
    out = attention_maps.overlay_attention(image, weights, x=2, y=1)
    assert out[:, 2:4, 4:6].tolist() == [[[0] * 2] * 2, [[255] * 2] * 2, [[0] * 2] * 2]  # query cell: green
    assert (out[0, 4:6, 4:6] > 100).all() and (out[1, 4:6, 4:6] < 100).all()  # window cell: red tint
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[2:6, 4:6] = False
    assert (out[:, untouched] == 100).all()
