"""Building blocks of the StyleNAT generator and its wavelet discriminator.

Layouts: generator tokens are channels-last ``[B, H, W, C]`` (any ``[B, *tokens, C]`` works where noted);
images and discriminator features are ``[B, C, H, W]``.

Sources of the exact semantics: rosinality's stylegan2-pytorch (equalized linear, fused bias + leaky
ReLU, upfirdn2d, minibatch std), StyleSwin (AdaIN over tokens, Haar wavelets, the 2-D sinusoidal
encoding of Xu et al., "Positional Encoding as Spatial Inductive Bias in GANs", CVPR 2021).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)  # keeps the activations' second moment through leaky ReLU (StyleGAN)


def pixel_norm(x: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """Divide by the root mean square over ``dim``: ``x / sqrt(mean(x^2) + eps)``."""
    return x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate and a learning-rate multiplier (StyleGAN).

    Parameters are stored as ``weight ~ N(0, 1) / lr_mul`` and ``bias = 0``; the layer computes
    ``x @ (weight * lr_mul / sqrt(in_features))^T + bias * lr_mul``, so Adam's steps on the stored values
    are scaled by ``lr_mul``. ``activation="lrelu"`` applies leaky ReLU (slope 0.2) times sqrt(2).

    ``[..., in_features]`` -> ``[..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, lr_mul: float = 1.0,
                 activation: str = "linear"):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.in_features, self.out_features = in_features, out_features
        self.lr_mul, self.activation = lr_mul, activation
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, bias)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
        return x

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"lr_mul={self.lr_mul}, activation={self.activation}")


class BiasedLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, 0.2) * sqrt(2)`` with a learned per-channel bias (StyleGAN2's FusedLeakyReLU).

    ``[B, C, *spatial]`` -> same shape.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.view(1, -1, *([1] * (x.dim() - 2)))
        return F.leaky_relu(x + bias, LRELU_SLOPE) * LRELU_GAIN

    def extra_repr(self) -> str:
        return f"channels={self.bias.numel()}"


class AdaIN(nn.Module):
    """Adaptive instance norm over tokens, the only path by which the style enters the synthesis.

    ``gamma * (x - mean) / sqrt(var + eps) + beta``, with mean and (biased) variance per sample and channel
    over all token axes (``nn.InstanceNorm1d`` without affine, eps 1e-5; statistics in float32), and
    ``(gamma, beta)`` = ``EqualLinear(w_dim, 2 * channels)(w)`` split in halves, gamma first.

    In eval mode on the CPU (sampling; two tokens or more) each sample is one fused ``batch_norm`` call over its
    ``[tokens, C]`` rows (training-mode statistics are exactly instance-norm statistics there, and the style is
    its affine): 2.4-12x faster than ``var_mean`` + ``addcmul`` over channels-last tokens at the ffhq256
    shapes, where that was 13-15% of sampling. In training mode the ``var_mean`` form stays: the fused path
    gained nothing measurable on the demo's training step, and its rounding differs between eager and
    ``torch.compile`` runs, which Adam's first steps amplify.

    x: ``[B, *tokens, C]`` channels-last, w: ``[B, w_dim]`` -> ``[B, *tokens, C]``.
    """

    def __init__(self, channels: int, w_dim: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.style = EqualLinear(w_dim, 2 * channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        token_dims = tuple(range(1, x.dim() - 1))
        stat_shape = (x.shape[0],) + (1,) * len(token_dims) + (self.channels,)
        gamma, beta = self.style(w).view(stat_shape[:-1] + (2, self.channels)).unbind(-2)
        if x.device.type == "cpu" and not self.training and x[0].numel() > self.channels:
            return self._per_sample_batch_norm(x, gamma, beta)
        var, mean = torch.var_mean(x.float(), dim=token_dims, correction=0, keepdim=True)
        out = torch.addcmul(beta, x - mean, gamma * torch.rsqrt(var + self.eps))
        return out.to(x.dtype)

    def _per_sample_batch_norm(self, x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        """The forward on the CPU: x ``[B, *tokens, C]``, gamma and beta ``[B, 1.., C]``; statistics in float32
        (float64 for float64 inputs)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        gamma, beta = gamma.to(dtype).reshape(-1, self.channels), beta.to(dtype).reshape(-1, self.channels)
        out = [F.batch_norm(sample.to(dtype).reshape(-1, self.channels), None, None, g, b, training=True,
                            eps=self.eps) for sample, g, b in zip(x, gamma, beta)]
        return torch.stack(out).view(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}"


# ---------------------------------------------------------------------------------------------
# FIR resampling


def fir_kernel(taps: Sequence[float]) -> Tensor:
    """Separable 2-D FIR kernel ``outer(taps, taps)``, normalised to unit DC gain: ``[k, k]`` float32."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    kernel = t[:, None] * t[None, :]
    return kernel / kernel.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0, 0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, convolve with ``kernel``, downsample; every channel alike.

    A true convolution (the kernel is flipped), as StyleGAN2's ``upfirdn2d``.

    Args:
        x: ``[B, C, H, W]``.
        kernel: ``[kh, kw]``.
        pad: non-negative ``(x0, x1, y0, y1)``: columns left/right, rows top/bottom.

    Returns:
        ``[B, C, (H * up + y0 + y1 - kh) // down + 1, (W * up + x0 + x1 - kw) // down + 1]``.
    """
    B, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(B, C, H, 1, W, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(B, C, H * up, W * up)
    x = F.pad(x, tuple(pad))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].repeat(C, 1, 1, 1)
    return F.conv2d(x, weight, stride=down, groups=C)


class FIRFilter2d(nn.Module):
    """Fixed FIR resampling of ``[B, C, H, W]`` maps: StyleGAN2's ``Upsample``, ``Downsample`` and ``Blur``.

    The kernel is ``fir_kernel(taps) * up**2`` (unit DC gain after zero insertion). Without an explicit
    ``pad`` the output is exactly ``up / down`` times the input size, padded as StyleGAN2 does
    (``p = k - factor``; upsampling pads ``((p + 1) // 2 + factor - 1, p // 2)``, downsampling
    ``((p + 1) // 2, p // 2)``). ``pad=(p0, p1)`` pads both axes with ``p0`` before and ``p1`` after.
    """

    def __init__(self, up: int = 1, down: int = 1, pad: Optional[Sequence[int]] = None,
                 taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if up > 1 and down > 1:
            raise ValueError(f"FIRFilter2d resamples one way: got up={up} and down={down}")
        self.up, self.down, self.taps = up, down, tuple(taps)
        if pad is None:
            p = len(self.taps) - max(up, down)
            pad = ((p + 1) // 2 + up - 1, p // 2)
        self.pad = tuple(pad)
        self.register_buffer("kernel", fir_kernel(self.taps) * up ** 2, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        p0, p1 = self.pad
        return upfirdn2d(x, self.kernel, self.up, self.down, (p0, p1, p0, p1))

    def extra_repr(self) -> str:
        return f"up={self.up}, down={self.down}, pad={self.pad}, taps={list(self.taps)}"


# ---------------------------------------------------------------------------------------------
# Haar wavelets


def haar_dwt(x: Tensor) -> Tensor:
    """Orthonormal 2-D Haar transform: ``[B, C, H, W]`` -> ``[B, 4C, H/2, W/2]``.

    Sub-bands in the order LL, LH, HL, HH, each ``C`` channels. With ``a, b`` the top-left/right and
    ``c, d`` the bottom-left/right pixel of a 2x2 block: ``LL = (a+b+c+d)/2``, ``LH = (a+b-c-d)/2``,
    ``HL = (a-b+c-d)/2``, ``HH = (a-b-c+d)/2`` (StyleSwin's ``HaarTransform``).
    """
    B, C, H, W = x.shape
    a, b, c, d = F.pixel_unshuffle(x, 2).view(B, C, 4, H // 2, W // 2).unbind(2)
    return 0.5 * torch.cat([a + b + c + d, a + b - c - d, a - b + c - d, a - b - c + d], dim=1)


def haar_iwt(x: Tensor) -> Tensor:
    """Inverse of :func:`haar_dwt`: ``[B, 4C, H, W]`` -> ``[B, C, 2H, 2W]``."""
    B, C4, H, W = x.shape
    ll, lh, hl, hh = x.chunk(4, dim=1)
    blocks = torch.stack([ll + lh + hl + hh, ll + lh - hl - hh, ll - lh + hl - hh, ll - lh - hl + hh], dim=2)
    return F.pixel_shuffle(0.5 * blocks.view(B, C4, H, W), 2)


# ---------------------------------------------------------------------------------------------
# Position encoding and minibatch statistics


def sinusoidal_position_encoding(height: int, width: int, channels: int, device=None,
                                 dtype: Optional[torch.dtype] = None) -> Tensor:
    """2-D sinusoidal position encoding (SPE2d), ``[height, width, channels]``.

    Channels ``[0, C/2)`` encode the column, ``[C/2, C)`` the row. Each half is
    ``[sin(p * f_0..f_{n-1}), cos(p * f_0..f_{n-1})]`` with ``n = C/4`` frequencies
    ``f_i = 10000^(-i / (n - 1))`` and positions ``p = 1..width`` (or ``1..height``): fairseq's encoding
    with padding index 0, as StyleSwin / StyleNAT use it. Computed in float32.
    """
    if channels % 4 or channels < 8:
        raise ValueError(f"the sinusoidal encoding needs a multiple of 4 channels >= 8, got {channels}")
    n = channels // 4
    freqs = torch.exp(torch.arange(n, dtype=torch.float32, device=device) * -(math.log(10000) / (n - 1)))

    def encode(length: int) -> Tensor:  # [length, C/2]
        angles = torch.arange(1, length + 1, dtype=torch.float32, device=device)[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    half = channels // 2
    columns = encode(width)[None, :, :].expand(height, width, half)
    rows = encode(height)[:, None, :].expand(height, width, half)
    return torch.cat([columns, rows], dim=2).to(dtype)


class MinibatchStd(nn.Module):
    """Append the minibatch standard deviation as extra feature maps (StyleGAN2's variant).

    Samples ``b`` and ``b + B/G`` (``G = min(B, group_size)``) share a group. Per group: the standard
    deviation over its members of every feature (biased, ``+ eps`` under the root), averaged over
    each of ``num_features`` channel slices and all pixels.

    ``[B, C, H, W]`` -> ``[B, C + num_features, H, W]``; ``B`` must be divisible by ``G``.
    """

    def __init__(self, group_size: int = 4, num_features: int = 1, eps: float = 1e-8):
        super().__init__()
        self.group_size, self.num_features, self.eps = group_size, num_features, eps

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        G, F_ = min(B, self.group_size), self.num_features
        if B % G:
            raise ValueError(f"minibatch std: batch {B} is not divisible by the group size {G}")
        y = x.view(G, B // G, F_, C // F_, H, W)
        y = torch.sqrt(y.var(dim=0, correction=0) + self.eps)  # [B/G, F, C/F, H, W]
        y = y.mean(dim=(2, 3, 4))[:, :, None, None]  # [B/G, F, 1, 1]
        return torch.cat([x, y.repeat(G, 1, H, W)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_features={self.num_features}"


class Mlp(nn.Module):
    """``Linear(C, hidden) -> GELU -> Linear(hidden, C)`` on ``[..., C]`` (transformer MLP)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
