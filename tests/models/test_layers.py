"""Layers of the StyleNAT generator and discriminator against independent formulations of the reference
semantics (StyleGAN2's upfirdn2d and Haar filters, nn.InstanceNorm1d, fairseq's sinusoidal table)."""

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn

from stylenat.models.layers import (
    AdaIN,
    BiasedLeakyReLU,
    EqualLinear,
    FIRFilter2d,
    MinibatchStd,
    fir_kernel,
    haar_dwt,
    haar_iwt,
    pixel_norm,
    sinusoidal_position_encoding,
    upfirdn2d,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_equal_linear_scales_at_runtime():
    layer = EqualLinear(64, 32, lr_mul=0.01)
    with torch.no_grad():
        layer.bias.normal_()
    assert abs(layer.weight.std().item() - 100.0) < 5.0  # stored as N(0, 1) / lr_mul
    x = torch.randn(5, 64)
    expected = F.linear(x, layer.weight * 0.01 / math.sqrt(64), layer.bias * 0.01)
    torch.testing.assert_close(layer(x), expected)

    act = EqualLinear(64, 32, lr_mul=0.01, activation="lrelu")
    act.load_state_dict(layer.state_dict())
    torch.testing.assert_close(act(x), F.leaky_relu(expected, 0.2) * math.sqrt(2))
    assert "lr_mul=0.01" in repr(act) and "activation=lrelu" in repr(act)
    with pytest.raises(ValueError, match="activation"):
        EqualLinear(4, 4, activation="relu")


def test_pixel_norm_gives_unit_rms():
    z = torch.randn(4, 512) * 7
    rms = pixel_norm(z).square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones(4))


def test_biased_leaky_relu():
    act = BiasedLeakyReLU(3)
    with torch.no_grad():
        act.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(act(x), F.leaky_relu(x + act.bias.view(1, 3, 1, 1), 0.2) * math.sqrt(2))
    torch.testing.assert_close(act(x[:, :, 0, 0]), F.leaky_relu(x[:, :, 0, 0] + act.bias, 0.2) * math.sqrt(2))


@pytest.mark.parametrize("tokens", [(16,), (4, 6)])
def test_adain_is_instance_norm_then_style_affine(tokens):
    B, C, w_dim = 3, 8, 16
    adain = AdaIN(C, w_dim)
    with torch.no_grad():
        adain.style.bias.normal_()
    x = torch.randn(B, *tokens, C) * 3 + 1
    w = torch.randn(B, w_dim)
    # The reference: nn.InstanceNorm1d(C) (eps 1e-5, no affine) on [B, C, N], then gamma * x + beta.
    normed = nn.InstanceNorm1d(C)(x.reshape(B, -1, C).transpose(1, 2)).transpose(1, 2).reshape(x.shape)
    gamma, beta = adain.style(w).chunk(2, dim=1)
    shape = (B,) + (1,) * len(tokens) + (C,)
    torch.testing.assert_close(adain(x, w), gamma.view(shape) * normed + beta.view(shape), atol=1e-6, rtol=1e-5)


def _adain_reference(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """nn.InstanceNorm1d (eps 1e-5, no affine) in float64 over the tokens of ``[B, *tokens, C]``, then the style
    affine."""
    B, C = x.shape[0], x.shape[-1]
    normed = nn.InstanceNorm1d(C)(x.double().reshape(B, -1, C).transpose(1, 2)).transpose(1, 2).reshape(x.shape)
    shape = (B,) + (1,) * (x.dim() - 2) + (C,)
    return gamma.double().view(shape) * normed + beta.double().view(shape)


@pytest.mark.parametrize("training", [True, False])  # var_mean form / CPU eval: fused batch_norm per sample
def test_adain_forward_and_gradients_match_float64_instance_norm_with_nan_and_inf(training):
    # Batch > 1 with one sample holding a NaN and another an Inf: only their channels turn NaN, as in the
    # reference; the other samples and their gradients stay exact.
    B, C, w_dim = 4, 16, 8
    adain = AdaIN(C, w_dim).train(training)
    with torch.no_grad():
        adain.style.bias.normal_()
    x = torch.randn(B, 8, 8, C) * 3 + 1
    x[1, 2, 3, 5] = float("nan")
    x[2, 0, 0, 7] = float("inf")
    w = torch.randn(B, w_dim)
    gamma, beta = adain.style(w).chunk(2, dim=1)
    out = adain(x, w)
    expected = _adain_reference(x, gamma, beta)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5, equal_nan=True)
    assert out[1, :, :, 5].isnan().all() and out[2, :, :, 7].isnan().all() and not out[[0, 3]].isnan().any()

    finite = x[[0, 3]].double().requires_grad_()
    adain64 = AdaIN(C, w_dim).double().train(training)
    adain64.load_state_dict(adain.state_dict())
    weights = torch.randn_like(finite)
    grad_x, grad_style = torch.autograd.grad((adain64(finite, w[[0, 3]].double()) * weights).sum(),
                                             [finite, adain64.style.weight])
    ref_x = finite.detach().requires_grad_()
    g64, b64 = adain64.style(w[[0, 3]].double()).chunk(2, dim=1)
    ref_grad_x, ref_grad_style = torch.autograd.grad((_adain_reference(ref_x, g64, b64) * weights).sum(),
                                                     [ref_x, adain64.style.weight])
    tolerance = dict(atol=1e-6, rtol=1e-4) if training else dict(atol=1e-10, rtol=1e-9)  # float32 statistics
    torch.testing.assert_close(grad_x, ref_grad_x, **tolerance)
    torch.testing.assert_close(grad_style, ref_grad_style, **tolerance)


@pytest.mark.cuda
def test_adain_on_cuda_matches_the_cpu():
    adain, x, w = AdaIN(32, 8).eval(), torch.randn(3, 16, 16, 32), torch.randn(3, 8)
    torch.testing.assert_close(adain.cuda()(x.cuda(), w.cuda()).cpu(), adain.cpu()(x, w), atol=1e-5, rtol=1e-5)


def test_adain_bf16_keeps_dtype():
    adain = AdaIN(8, 16)
    out = adain(torch.randn(2, 4, 4, 8, dtype=torch.bfloat16), torch.randn(2, 16))
    assert out.dtype == torch.bfloat16


def test_fir_kernel():
    expected = torch.tensor([1.0, 3, 3, 1])[:, None] * torch.tensor([1.0, 3, 3, 1]) / 64
    torch.testing.assert_close(fir_kernel([1, 3, 3, 1]), expected)


def test_upfirdn2d_is_a_true_convolution():
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    kernel = torch.randn(3, 4, dtype=torch.float64)  # asymmetric: the flip matters
    out = upfirdn2d(x, kernel, pad=(3, 3, 2, 2))  # "full" convolution
    for c in range(2):
        expected = scipy.signal.convolve2d(x[0, c].numpy(), kernel.numpy(), mode="full")
        np.testing.assert_allclose(out[0, c].numpy(), expected, atol=1e-12)


def test_fir_upsample_and_downsample_match_strided_convolutions():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    k = fir_kernel([1, 3, 3, 1]).double()
    weight = k[None, None].repeat(3, 1, 1, 1)
    up = FIRFilter2d(up=2).double()
    torch.testing.assert_close(up(x), F.conv_transpose2d(x, weight * 4, stride=2, padding=1, groups=3))
    down = FIRFilter2d(down=2).double()
    torch.testing.assert_close(down(x), F.conv2d(x, weight, stride=2, padding=1, groups=3))
    blur = FIRFilter2d(pad=(2, 2)).double()
    torch.testing.assert_close(blur(x), F.conv2d(F.pad(x, (2, 2, 2, 2)), weight, groups=3))
    assert up(x).shape == (2, 3, 16, 16) and down(x).shape == (2, 3, 4, 4) and blur(x).shape == (2, 3, 9, 9)
    assert "pad=(2, 1)" in repr(up)
    assert not up.state_dict()  # the kernel is a fixed, non-persistent buffer


def _reference_haar_filters():
    """StyleSwin's get_haar_wavelet: ll, lh, hl, hh from l = [1, 1]/sqrt2 and h = [-1, 1]/sqrt2."""
    low = torch.ones(1, 2, dtype=torch.float64) / math.sqrt(2)
    high = low.clone()
    high[0, 0] = -high[0, 0]
    return low.T * low, high.T * low, low.T * high, high.T * high


def test_haar_dwt_matches_the_reference_filters():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    expected = torch.cat([upfirdn2d(x, f, down=2) for f in _reference_haar_filters()], dim=1)
    torch.testing.assert_close(haar_dwt(x), expected)


def test_haar_iwt_matches_the_reference_filters_and_inverts():
    y = torch.randn(2, 12, 4, 5, dtype=torch.float64)
    ll, lh, hl, hh = _reference_haar_filters()
    bands = y.chunk(4, dim=1)
    expected = sum(upfirdn2d(b, f, up=2, pad=(1, 0, 1, 0)) for b, f in zip(bands, (ll, -lh, -hl, hh)))
    torch.testing.assert_close(haar_iwt(y), expected)
    torch.testing.assert_close(haar_dwt(haar_iwt(y)), y)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(haar_iwt(haar_dwt(x)), x)
    torch.testing.assert_close(haar_dwt(x).square().sum(), x.square().sum())  # orthonormal


def test_sinusoidal_position_encoding_is_fairseq_spe2d():
    H, W, C = 5, 7, 16
    pe = sinusoidal_position_encoding(H, W, C)
    assert pe.shape == (H, W, C)
    n = C // 4
    for y in range(H):
        for x in range(W):
            for i in range(n):
                f = math.exp(-i * math.log(10000) / (n - 1))
                expected = [math.sin((x + 1) * f), math.cos((x + 1) * f), math.sin((y + 1) * f), math.cos((y + 1) * f)]
                got = [pe[y, x, i], pe[y, x, n + i], pe[y, x, 2 * n + i], pe[y, x, 3 * n + i]]
                np.testing.assert_allclose([float(g) for g in got], expected, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 4"):
        sinusoidal_position_encoding(4, 4, 10)


def test_minibatch_std_groups_strided_samples():
    x = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    out = MinibatchStd(group_size=4, num_features=1)(x)
    assert out.shape == (8, 7, 3, 3)
    torch.testing.assert_close(out[:, :6], x)
    for b in range(8):
        group = x[b % 2::2]  # samples b, b + 2, b + 4, b + 6 share a group (view(G, B/G, ...))
        expected = torch.sqrt(group.var(dim=0, correction=0) + 1e-8).mean()
        torch.testing.assert_close(out[b, 6], expected.expand(3, 3))
    assert MinibatchStd()(torch.randn(3, 4, 2, 2)).shape == (3, 5, 2, 2)  # group = min(batch, 4)
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStd(group_size=4)(torch.randn(6, 4, 2, 2))
