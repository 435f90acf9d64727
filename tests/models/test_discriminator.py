"""Wavelet discriminator: exact sizes, the reference's forward pass, gradients, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from stylenat.models.discriminator import PRESETS, create_discriminator
from stylenat.models.layers import fir_kernel, upfirdn2d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_with_the_papers_sizes(name):
    D = create_discriminator(name)
    assert len(D.blocks) == int(math.log2(D.size)) - 3 and len(D.from_rgbs) == len(D.blocks) + 1
    expected = {"ffhq256": 26_211_585, "church256": 26_211_585, "ffhq1024": 27_736_641}.get(name)
    if expected is not None:
        assert sum(p.numel() for p in D.parameters()) == expected


def _haar(x, inverse=False):
    """StyleSwin's HaarTransform / InverseHaarTransform through upfirdn2d and its 2x2 filters."""
    low = torch.ones(1, 2, dtype=x.dtype) / math.sqrt(2)
    high = low.clone()
    high[0, 0] *= -1
    ll, lh, hl, hh = low.T * low, high.T * low, low.T * high, high.T * high
    if not inverse:
        return torch.cat([upfirdn2d(x, f, down=2) for f in (ll, lh, hl, hh)], dim=1)
    return sum(upfirdn2d(b, f, up=2, pad=(1, 0, 1, 0)) for b, f in zip(x.chunk(4, 1), (ll, -lh, -hl, hh)))


def _reference_forward(D, img):
    """The reference Discriminator.forward, written out from its modules' definitions, on D's weights."""
    k = fir_kernel([1, 3, 3, 1]).to(img.dtype)

    def act(x, bias):  # FusedLeakyReLU
        return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.dim() - 2)), 0.2) * math.sqrt(2)

    def from_rgb(i, wavelets, skip):
        m = D.from_rgbs[i]
        if i > 0:  # iwt -> Downsample([1, 3, 3, 1]) (pad 1, 1) -> dwt
            wavelets = _haar(upfirdn2d(_haar(wavelets, inverse=True), k, down=2, pad=(1, 1, 1, 1)))
        out = act(F.conv2d(wavelets, m.conv.weight), m.act.bias)
        return wavelets, out if skip is None else out + skip

    wavelets, out = _haar(img), None
    for i, block in enumerate(D.blocks):
        wavelets, out = from_rgb(i, wavelets, out)
        out = act(F.conv2d(out, block.conv1.weight, padding=1), block.act1.bias)
        out = upfirdn2d(out, k, pad=(2, 2, 2, 2))  # Blur: p = (4 - 2) + (3 - 1), pads (p + 1) // 2, p // 2
        out = act(F.conv2d(out, block.conv2.weight, stride=2), block.act2.bias)
    _, out = from_rgb(len(D.blocks), wavelets, out)
    B, C, H, W = out.shape
    group = min(B, 4)
    std = out.view(group, -1, 1, C, H, W)
    std = torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
    out = torch.cat([out, std.repeat(group, 1, H, W)], 1)
    out = act(F.conv2d(out, D.final_conv.weight, padding=1), D.final_act.bias)
    out = act(F.linear(out.view(B, -1), D.fc.weight, D.fc.bias), D.fc_act.bias)
    return F.linear(out, D.out.weight, D.out.bias)


def test_forward_is_the_reference_forward():
    D = create_discriminator("demo").eval()  # eval: spectral norm without power iterations
    for name, p in D.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.1)
    img = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(D(img), _reference_forward(D, img), atol=1e-5, rtol=1e-4)


def test_spectral_norm_on_every_conv_and_linear():
    D = create_discriminator("demo")
    layers = [m for m in D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") and hasattr(m.parametrizations, "weight") for m in layers)


def test_demo_forward_backward_reaches_every_parameter():
    D = create_discriminator("demo")
    logits = D(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 1)
    logits.sum().backward()
    dead = [n for n, p in D.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_errors():
    D = create_discriminator("demo")
    with pytest.raises(AssertionError, match=r"expected images \[B, 3, 32, 32\]"):
        D(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible"):
        D(torch.randn(6, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown discriminator preset 'ffhq512'"):
        create_discriminator("ffhq512")
    with pytest.raises(ValueError, match="power of two"):
        create_discriminator("demo", size=48)
