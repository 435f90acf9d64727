"""The wavelet discriminator StyleNAT trains with (SWAGAN, Gal et al. 2021, as adopted by StyleSwin).

Reference code: github.com/SHI-Labs/StyleNAT ``models/discriminator.py`` (StyleSwin's, spectral-norm
variant); its checkpoints load through ``stylenat.models.convert``.

    img [B, 3, S, S] --Haar DWT--> [B, 12, S/2, S/2] --blocks + wavelet inputs--> [B, C4, 4, 4]
        --minibatch std, conv, fc--> logits [B, 1]

Features at resolution ``r`` (after the DWT) pass one block per octave down to 4x4: a 3x3 conv, then a
3x3 stride-2 conv behind a [1, 3, 3, 1] blur; no residual skip. Before every block and once at 4x4,
the wavelet image is brought to the current resolution (inverse DWT, FIR downsample, DWT) and a 1x1
conv of its 12 channels is **added** to the features. Every conv and linear is spectrally normalised
(the paper's setting); activations are leaky ReLU (0.2) times sqrt(2) after a learned bias.

Widths: ``C(r) = min(channel_base // r, channel_max)`` as the generator. Following the reference, the
first features (at S/2 after the DWT) take the width of the image resolution, ``C(S)``, and every later
map at ``r`` takes ``C(r)``.
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from stylenat.models.layers import BiasedLeakyReLU, FIRFilter2d, MinibatchStd, haar_dwt, haar_iwt


def _sn_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False))


class FromWavelets(nn.Module):
    """Adds a 1x1 conv of the wavelet image to the features, after bringing the wavelet image down one
    octave (inverse DWT, [1, 3, 3, 1] FIR downsample, DWT) unless ``downsample`` is False.

    wavelets ``[B, 12, 2r, 2r]`` (``[B, 12, r, r]`` without downsampling), features ``[B, C, r, r]`` or None
    -> (wavelets ``[B, 12, r, r]``, features ``[B, C, r, r]``).
    """

    def __init__(self, out_channels: int, downsample: bool = True):
        super().__init__()
        self.downsample = FIRFilter2d(down=2) if downsample else None
        self.conv = _sn_conv(12, out_channels, 1)
        self.act = BiasedLeakyReLU(out_channels)

    def forward(self, wavelets: Tensor, features: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if self.downsample is not None:
            wavelets = haar_dwt(self.downsample(haar_iwt(wavelets)))
        out = self.act(self.conv(wavelets))
        return wavelets, out if features is None else out + features


class DiscriminatorBlock(nn.Module):
    """3x3 conv, then blur and 3x3 stride-2 conv: ``[B, C_in, r, r]`` -> ``[B, C_out, r/2, r/2]``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _sn_conv(in_channels, in_channels, 3, padding=1)
        self.act1 = BiasedLeakyReLU(in_channels)
        self.blur = FIRFilter2d(pad=(2, 2))  # (taps - stride) + (kernel - 1) = 4 pixels of padding
        self.conv2 = _sn_conv(in_channels, out_channels, 3, stride=2)
        self.act2 = BiasedLeakyReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.conv1(x))
        return self.act2(self.conv2(self.blur(x)))


class Discriminator(nn.Module):
    """Wavelet discriminator: images ``[B, 3, size, size]`` in [-1, 1] -> logits ``[B, 1]``.

    Args:
        size: input resolution, a power of two >= 16.
        channel_base, channel_max: widths ``min(channel_base // r, channel_max)``.
        mbstd_group_size, mbstd_num_features: minibatch standard deviation (the batch must be divisible
            by ``min(batch, mbstd_group_size)``).
    """

    def __init__(self, size: int = 256, channel_base: int = 32768, channel_max: int = 512,
                 mbstd_group_size: int = 4, mbstd_num_features: int = 1):
        super().__init__()
        if size < 16 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 16, got {size}")
        self.size = size

        def width(r: int) -> int:
            return min(channel_base // r, channel_max)

        resolutions = [2 ** i for i in range(int(math.log2(size)) - 1, 2, -1)]  # S/2, ..., 8: one block each
        in_widths = [width(size)] + [width(r) for r in resolutions[1:]]
        self.from_rgbs = nn.ModuleList(FromWavelets(c, downsample=i > 0) for i, c in enumerate(in_widths))
        self.blocks = nn.ModuleList(DiscriminatorBlock(c, width(r // 2)) for c, r in zip(in_widths, resolutions))
        self.from_rgbs.append(FromWavelets(width(4)))
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_features)
        self.final_conv = _sn_conv(width(4) + mbstd_num_features, width(4), 3, padding=1)
        self.final_act = BiasedLeakyReLU(width(4))
        self.fc = spectral_norm(nn.Linear(width(4) * 4 * 4, width(4)))
        self.fc_act = BiasedLeakyReLU(width(4))
        self.out = spectral_norm(nn.Linear(width(4), 1))

    def forward(self, img: Tensor) -> Tensor:
        assert img.shape[1:] == (3, self.size, self.size), \
            f"expected images [B, 3, {self.size}, {self.size}], got {list(img.shape)}"
        wavelets, x = haar_dwt(img), None
        for from_rgb, block in zip(self.from_rgbs, self.blocks):
            wavelets, x = from_rgb(wavelets, x)
            x = block(x)
        _, x = self.from_rgbs[-1](wavelets, x)  # [B, C4, 4, 4]
        x = self.final_act(self.final_conv(self.mbstd(x)))
        return self.out(self.fc_act(self.fc(x.flatten(1))))

    def extra_repr(self) -> str:
        return f"size={self.size}"


PRESETS: dict[str, dict] = {
    "ffhq256": dict(size=256),  # 26,211,585 parameters
    "ffhq1024": dict(size=1024),  # 27,736,641 parameters
    "church256": dict(size=256),
    "demo": dict(size=32, channel_base=1024, channel_max=128),  # widths 32 at 16 px, then 128
}


def create_discriminator(name: str, **overrides) -> Discriminator:
    """Build a preset (``ffhq256``, ``ffhq1024``, ``church256``, ``demo``); any keyword overrides it."""
    if name not in PRESETS:
        raise ValueError(f"unknown discriminator preset {name!r}; choose from {sorted(PRESETS)}")
    return Discriminator(**{**PRESETS[name], **overrides})
