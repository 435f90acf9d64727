"""StyleNAT generator: exact sizes, attention semantics, mapping (truncation, w_avg, style mixing),
gradients, and configuration errors. Numeric parity with the reference is in test_convert.py."""

import warnings

import pytest
import torch

import natten_ops
from stylenat.models.attention import HydraNeighborhoodAttention
from stylenat.checkpoints import load_generator
from stylenat.models import save_generator
from stylenat.models.generator import PRESETS, Generator, RelativePositionAttention, create_generator, mixture_latents
from stylenat.models.layers import AdaIN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return create_generator("demo")


def _meta_generator(name, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # church256's uneven head split
        with torch.device("meta"):
            return create_generator(name, **overrides)


@pytest.mark.parametrize("name, count", [("ffhq256", 48_921_000), ("ffhq1024", 49_452_934)])
def test_parameter_count_matches_the_paper(name, count):
    assert sum(p.numel() for p in _meta_generator(name).parameters()) == count


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_with_one_style_per_block(name):
    G = _meta_generator(name)
    stages = G.synthesis.stages
    assert 4 * 2 ** (len(stages) - 1) == G.size and G.num_ws == 2 * len(stages) == G.mapping.num_ws
    assert isinstance(stages[0].blocks[0].attn, RelativePositionAttention)
    assert all(isinstance(b.attn, HydraNeighborhoodAttention) for s in stages[1:] for b in s.blocks)
    assert "resolution=4" in repr(G)


def test_ffhq256_head_groups_and_widths():
    G = _meta_generator("ffhq256")
    got = [(s.dim, s.num_heads, s.blocks[0].attn.extra_repr()) for s in G.synthesis.stages[1:]]
    assert [g[:2] for g in got] == [(512, 16), (512, 16), (512, 16), (512, 16), (256, 8), (128, 4)]
    assert "groups=[16x(k=7, d=1)]" in got[0][2]
    assert "groups=[8x(k=7, d=1), 8x(k=7, d=2)]" in got[1][2]
    assert "groups=[2x(k=7, d=1), 2x(k=7, d=32)]" in got[5][2]


def test_relative_position_attention_matches_the_reference_formulation():
    attn = RelativePositionAttention(dim=32, num_heads=4, resolution=4)
    with torch.no_grad():
        attn.rpb.normal_()
    # The reference: Swin's relative index, flipped up-down and left-right, over rpb.permute(1, 2, 0).
    coords = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + 3
    index = torch.flipud(torch.fliplr(rel[..., 0] * 7 + rel[..., 1]))
    torch.testing.assert_close(attn.relative_position_index, index)
    assert "relative_position_index" not in attn.state_dict()

    x = torch.randn(2, 4, 4, 32)
    q, k, v = attn.qkv(x).reshape(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
    bias = attn.rpb.permute(1, 2, 0).flatten(0, 1)[index.view(-1)].view(16, 16, 4).permute(2, 0, 1)
    weights = ((q * 8 ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 4, 4, 32))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_hydra_attention_is_head_groups_run_separately():
    with pytest.warns(UserWarning, match="evenly"):
        attn = HydraNeighborhoodAttention(dim=40, num_heads=5, pattern=[(3, 2), (5, 1)])
    for table in attn.rpb:
        torch.nn.init.normal_(table)
    x = torch.randn(2, 9, 10, 40)
    q, k, v = attn.qkv(x).reshape(2, 9, 10, 3, 5, 8).permute(3, 0, 4, 1, 2, 5)
    outs, head = [], 0
    for heads, (kernel, dilation), rpb in zip([2, 3], [(3, 2), (5, 1)], attn.rpb):  # last group gets the extra head
        s = slice(head, head + heads)
        outs.append(natten_ops.na2d(q[:, s], k[:, s], v[:, s], kernel, dilation, rpb=rpb, backend="reference"))
        head += heads
    expected = attn.proj(torch.cat(outs, dim=1).permute(0, 2, 3, 1, 4).reshape(2, 9, 10, 40))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_demo_forward_backward_reaches_every_parameter(demo):
    z = torch.randn(4, demo.z_dim)
    img = demo(z)
    assert img.shape == (4, 3, 32, 32) and img.is_contiguous() and torch.isfinite(img).all()
    img.square().mean().backward()
    dead = [n for n, p in demo.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"
    demo.zero_grad(set_to_none=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ffhq256", "ffhq1024"])
def test_full_size_forward_backward(name):
    G = create_generator(name)
    img = G(torch.randn(1, 512))
    assert img.shape == (1, 3, G.size, G.size)
    img.mean().backward()
    assert all(p.grad is not None for p in G.parameters())


def test_truncation_psi_zero_gives_w_avg_for_every_z(demo):
    demo.eval()
    with torch.no_grad():
        demo.mapping.w_avg.normal_()
        img = demo(torch.randn(3, demo.z_dim), psi=0.0)
        expected = demo.synthesis(demo.mapping.w_avg.expand(1, demo.num_ws, -1))
    torch.testing.assert_close(img, expected.expand(3, -1, -1, -1), atol=1e-5, rtol=1e-5)


def test_truncation_cutoff_touches_only_the_first_styles(demo):
    demo.eval()
    z = torch.randn(2, demo.z_dim)
    with torch.no_grad():
        demo.mapping.w_avg.normal_()
        ws = demo.mapping(z)
        truncated = demo.mapping(z, psi=0.5, cutoff=3)
    torch.testing.assert_close(truncated[:, :3], demo.mapping.w_avg + 0.5 * (ws[:, :3] - demo.mapping.w_avg))
    torch.testing.assert_close(truncated[:, 3:], ws[:, 3:])


def test_w_avg_is_an_ema_updated_in_training_only():
    G = create_generator("demo")
    z = torch.randn(6, G.z_dim)
    G.eval()
    G.mapping(z)
    assert torch.equal(G.mapping.w_avg, torch.zeros(G.w_dim))
    G.train()
    with torch.no_grad():
        ws = G.mapping(z)
    torch.testing.assert_close(G.mapping.w_avg, ws[:, 0].mean(0) * (1 - 0.995))
    before = G.mapping.w_avg.clone()
    G.mapping(z, update_w_avg=False)
    assert torch.equal(G.mapping.w_avg, before)
    assert "mapping.w_avg" in G.state_dict()


def test_each_block_reads_its_own_style(demo):
    seen = {}
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[1]))
             for name, m in demo.named_modules() if isinstance(m, AdaIN)]
    ws = torch.randn(2, demo.num_ws, demo.w_dim)
    with torch.no_grad():
        demo.synthesis(ws)
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * demo.num_ws
    for name, w in seen.items():
        stage, block = int(name.split(".")[2]), int(name.split(".")[4])
        assert torch.equal(w, ws[:, 2 * stage + block]), name


def test_style_mixing_switches_styles_at_a_cutoff():
    G = create_generator("demo", style_mixing_prob=1.0).train()
    z = torch.randn(3, G.z_dim)
    cutoffs = set()
    for _ in range(10):
        ws = G.mapping(z, update_w_avg=False)
        mixed = G.mix_styles(ws)
        c = next(i for i in range(G.num_ws) if not torch.equal(mixed[:, i], ws[:, i]))
        assert 1 <= c < G.num_ws
        assert torch.equal(mixed[:, :c], ws[:, :c])
        assert all(torch.equal(mixed[:, j], mixed[:, c]) for j in range(c, G.num_ws))  # one other w from c on
        cutoffs.add(c)
    assert len(cutoffs) > 1
    torch.manual_seed(1)
    train_img = G(z, update_w_avg=False)
    G.eval()
    torch.manual_seed(1)
    assert not torch.allclose(train_img, G(z))  # mixing in training mode only
    G.style_mixing_prob = 0.0
    ws = G.mapping(z)
    assert torch.equal(G.mix_styles(ws), ws)


def test_mixture_latents_take_the_component_of_the_first_coordinates_quantile_bin():
    means = torch.randn(4, 6)
    z = torch.randn(4, 6)
    z[:, 0] = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.1, 0.3, 0.6, 0.9]))  # bins of 1/4
    torch.testing.assert_close(mixture_latents(z, means), z + means, rtol=0, atol=0)
    many = torch.randn(40_000, 6)
    picked = torch.cdist(mixture_latents(many, means) - many, means).argmin(1)  # each row moved by one mean
    shares = torch.bincount(picked, minlength=4) / len(many)
    torch.testing.assert_close(shares, torch.full((4,), 0.25), rtol=0, atol=0.01)
    extremes = torch.zeros(2, 6)
    extremes[:, 0] = torch.tensor([-40.0, 40.0])  # Phi = 0 and 1: the first and the last component
    torch.testing.assert_close(mixture_latents(extremes, means), extremes + means[[0, 3]], rtol=0, atol=0)


def test_latent_modes_feed_the_mapping_a_mixture_draw_with_seeded_means_kept_in_the_state_dict(tmp_path):
    torch.manual_seed(1)
    G = create_generator("demo", size=16, kernels=[[7], [7]], dilations=[[1], [1]], latent_modes=3).eval()
    torch.manual_seed(2)
    again = create_generator("demo", size=16, kernels=[[7], [7]], dilations=[[1], [1]], latent_modes=3)
    assert G.mapping.latent_means.shape == (3, G.z_dim)
    assert torch.equal(G.mapping.latent_means, again.mapping.latent_means)  # not drawn from the global RNG
    assert "mapping.latent_means" in G.state_dict()
    plain = create_generator("demo", size=16, kernels=[[7], [7]], dilations=[[1], [1]]).eval()
    missing, unexpected = plain.load_state_dict(G.state_dict(), strict=False)
    assert (missing, unexpected) == ([], ["mapping.latent_means"])
    z = torch.randn(5, G.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(G(z), plain(mixture_latents(z, G.mapping.latent_means)), rtol=0, atol=0)
        assert not torch.allclose(G(z), plain(z))
    save_generator(G, tmp_path / "G.safetensors", "demo", dict(size=16, kernels=[[7], [7]], dilations=[[1], [1]],
                                                               latent_modes=3), {})
    loaded, info = load_generator(tmp_path / "G.safetensors")
    assert info["overrides"]["latent_modes"] == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), G(z), rtol=0, atol=0)
    for bad in (1, -2, 2.5):
        with pytest.raises(ValueError, match=f"latent_modes must be 0 .* or at least 2, got {bad}"):
            create_generator("demo", latent_modes=bad)


def test_bad_configs_fail_at_construction_naming_the_stage():
    with pytest.raises(ValueError, match=r"stage 16x16: kernel 7 x dilation 4 = 28 is larger than the 16x16"):
        create_generator("demo", dilations=[[1], [1, 4], [1, 4]])
    with pytest.raises(ValueError, match=r"stage 4x4: 128 channels .* do not split into 5 heads"):
        create_generator("demo", head_channels=24)
    with pytest.raises(ValueError, match=r"stage 8x8: kernel sizes must be odd"):
        create_generator("demo", kernels=[[6], [7], [7]])
    with pytest.raises(ValueError, match=r"dilations needs one entry per neighborhood-attention stage"):
        create_generator("demo", dilations=[[1], [1, 2]])
    with pytest.raises(ValueError, match=r"stage 32x32: 5 head groups"):
        create_generator("demo", dilations=[[1], [1], [1, 2, 3, 4, 4]])
    with pytest.raises(ValueError, match=r"stage 16x16: kernel_sizes \[3, 5\] and dilations \[1, 2, 3\]"):
        create_generator("demo", kernels=[[7], [3, 5], [7]], dilations=[[1], [1, 2, 3], [1]])
    with pytest.raises(ValueError, match="unknown generator preset 'ffhq512'"):
        create_generator("ffhq512")
    with pytest.raises(ValueError, match="power of two"):
        Generator(size=48)
