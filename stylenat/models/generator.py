"""StyleNAT generator: Walton, Hassani, Xu, Wang, Shi, "StyleNAT: Giving Each Head a New Perspective",
arXiv 2211.05770. Reference code: github.com/SHI-Labs/StyleNAT (built on StyleSwin); its released
checkpoints load through ``stylenat.models.convert`` and reproduce its images.

    z [B, z_dim] --mapping--> ws [B, num_ws, w_dim] --synthesis--> img [B, 3, size, size]

Mapping: pixel norm, then equalized linear layers with leaky ReLU and learning-rate multiplier 0.01.
We add what the reference lacks: a tracked ``w_avg`` (EMA of w during training), truncation
(``psi``, ``cutoff``), style-mixing regularisation (``style_mixing_prob``, 0 by default as in the paper) and,
off by default, a mixture-of-Gaussians latent (``latent_modes``, see :func:`mixture_latents`) for data made of
a few separate kinds of image, such as the demo's ten digits.

Synthesis: a learned 4x4 constant, then one stage per resolution 4, 8, ..., size. A stage is two style
blocks (``x += Attn(AdaIN(x, w))``, ``x += MLP(AdaIN(x, w))``, one w per block, so ``num_ws = 2 * stages``);
the 4x4 stage attends fully with a relative-position bias, the others use Hydra neighborhood attention
(heads split in groups with their own kernel size and dilation). Every stage but the last then
upsamples its tokens (bilinear x2, LayerNorm, Linear to the next width, plus ``alpha`` times a sinusoidal
position encoding). Each stage emits RGB from its output tokens (after that upsampling); the RGB skip
is FIR-upsampled where the resolution grows, and summed. No tanh.

Tokens stay channels-last ``[B, H, W, C]`` from the constant to the last ToRGB; only attention sees
heads-first ``[B, heads, H, W, head_dim]``.

Output scale: images are in ``[-1, 1]`` (black -1, white 1), the scale our data pipeline feeds the
discriminator; the generator does not clamp. (The reference trains on ImageNet-normalised pixels;
the converter folds that affine into the ToRGB layers.)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylenat.models.attention import HydraNeighborhoodAttention, RelativePositionAttention
from stylenat.models.layers import AdaIN, EqualLinear, FIRFilter2d, Mlp, pixel_norm, sinusoidal_position_encoding

# ---------------------------------------------------------------------------------------------
# Mapping network


LATENT_MEANS_SEED = 0
"""Seed of the component means of :func:`mixture_latents` (drawn once at construction, then kept in the state dict)."""


def mixture_latents(z: Tensor, means: Tensor) -> Tensor:
    """Map ``z ~ N(0, I)`` ``[B, z_dim]`` to a draw of the equal-weight mixture of the Gaussians ``N(means[k], I)``.

    ``means`` ``[K, z_dim]``. The component is read off the first coordinate of z, cut at the normal quantiles
    into K bins of probability 1/K each, ``k = floor(K * Phi(z[:, 0]))``; the draw is ``z + means[k]``. Every
    component is so picked with probability 1/K, and latents between two components are never drawn: a
    generator can give each component one kind of image without a continuum of blends between them. (Within
    component k the first coordinate is the normal restricted to its bin; the others are N(0, 1).)
    """
    num_modes = means.shape[0]
    component = (torch.special.ndtr(z[:, 0].float()) * num_modes).long().clamp_(0, num_modes - 1)
    return z + means[component].to(z.dtype)


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, ``num_layers`` equalized linear layers (leaky ReLU, ``lr_mul``), broadcast to ws.

    ``w_avg`` tracks the mean w (EMA with ``w_avg_beta``) for truncation. With ``latent_modes`` K >= 2, z first
    becomes a draw of a mixture of K unit Gaussians (:func:`mixture_latents`) whose means ``latent_means``
    ``[K, z_dim]`` are fixed ``N(0, I)`` draws (seed :data:`LATENT_MEANS_SEED`), a buffer in the state dict.
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995, latent_modes: int = 0):
        super().__init__()
        if not isinstance(latent_modes, int) or latent_modes == 1 or latent_modes < 0:
            raise ValueError(f"latent_modes must be 0 (a plain Gaussian latent) or at least 2, got {latent_modes}")
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        self.latent_modes = latent_modes
        if latent_modes:
            means = torch.randn(latent_modes, z_dim, device="cpu",
                                generator=torch.Generator().manual_seed(LATENT_MEANS_SEED))
            self.register_buffer("latent_means", means)
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(EqualLinear(i, o, lr_mul=lr_mul, activation="lrelu")
                                    for i, o in zip(dims[:-1], dims[1:]))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, psi: float = 1.0, cutoff: Optional[int] = None,
                update_w_avg: Optional[bool] = None) -> Tensor:
        """``[B, z_dim]`` -> ws ``[B, num_ws, w_dim]``.

        Args:
            psi: truncation: ws move to ``w_avg + psi * (w - w_avg)``; 1 leaves them, 0 gives ``w_avg``.
            cutoff: truncate only the first ``cutoff`` style inputs (all when None).
            update_w_avg: update the ``w_avg`` EMA with this batch's w (before truncation);
                default: when the module is in training mode.
        """
        if self.latent_modes:
            z = mixture_latents(z, self.latent_means)
        w = pixel_norm(z)
        for layer in self.layers:
            w = layer(w)
        if update_w_avg is None:
            update_w_avg = self.training
        if update_w_avg:
            self.w_avg.lerp_(w.detach().mean(dim=0).to(self.w_avg.dtype), 1 - self.w_avg_beta)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            cutoff = self.num_ws if cutoff is None else cutoff
            ws = torch.cat([self.w_avg.to(ws.dtype).lerp(ws[:, :cutoff], psi), ws[:, cutoff:]], dim=1)
        return ws

    def extra_repr(self) -> str:
        modes = f", latent_modes={self.latent_modes}" if self.latent_modes else ""
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, w_avg_beta={self.w_avg_beta}{modes}"


# ---------------------------------------------------------------------------------------------
# Synthesis network


class StyleBlock(nn.Module):
    """Pre-norm transformer block with AdaIN: ``x += attn(norm1(x, w))``, ``x += mlp(norm2(x, w))``.

    x: ``[B, H, W, C]``, w: ``[B, w_dim]`` -> ``[B, H, W, C]``.
    """

    def __init__(self, dim: int, w_dim: int, attn: nn.Module, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = AdaIN(dim, w_dim)
        self.attn = attn
        self.norm2 = AdaIN(dim, w_dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x, w))
        return x + self.mlp(self.norm2(x, w))


class TokenUpsample(nn.Module):
    """Between stages: bilinear x2 (align_corners False), LayerNorm, Linear without bias to the next
    width, plus ``alpha`` (learned, starts at 0) times the 2-D sinusoidal position encoding.

    ``[B, H, W, C]`` -> ``[B, 2H, 2W, out_dim]``.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim, self.out_dim = dim, out_dim
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim, bias=False)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        # On the channels-last view, interpolate keeps channels-last strides: no layout copies.
        x = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False)
        x = self.proj(self.norm(x.permute(0, 2, 3, 1)))
        B, H, W, C = x.shape
        return x + self.alpha * sinusoidal_position_encoding(H, W, C, device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, out_dim={self.out_dim}"


class ToRGB(nn.Module):
    """1x1 projection of the tokens to RGB plus a learned bias, added to the (FIR-upsampled) RGB skip.

    ``proj`` carries the reference's 1x1 conv (weight and bias); ``bias`` is the reference's second,
    separate RGB bias, kept so that parameter counts and checkpoints match exactly.

    x: ``[B, H, W, C]``, skip: None, ``[B, 3, H/2, W/2]`` (``upsample_skip``) or ``[B, 3, H, W]``
    -> ``[B, 3, H, W]``.
    """

    def __init__(self, dim: int, upsample_skip: bool):
        super().__init__()
        self.proj = nn.Linear(dim, 3)
        nn.init.xavier_normal_(self.proj.weight, gain=0.02)
        nn.init.zeros_(self.proj.bias)
        self.bias = nn.Parameter(torch.zeros(3))
        self.upsample = FIRFilter2d(up=2) if upsample_skip else None

    def forward(self, x: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        rgb = (self.proj(x) + self.bias).permute(0, 3, 1, 2)
        if skip is None:
            return rgb
        return rgb + (self.upsample(skip) if self.upsample is not None else skip)

    def extra_repr(self) -> str:
        return f"dim={self.proj.in_features}"


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SynthesisStage(nn.Module):
    """Two style blocks at ``resolution``, then (unless last) the token upsampling, then ToRGB.

    ``pattern`` lists the (kernel, dilation) of each head group; None means full attention (4x4).
    x ``[B, r, r, C]``, w0 and w1 ``[B, w_dim]``, img ``[B, 3, r', r']`` or None ->
    (x ``[B, r_out, r_out, C_out]``, img ``[B, 3, r_out, r_out]``), ``r_out = 2r`` unless last.
    """

    def __init__(self, resolution: int, dim: int, out_dim: Optional[int], num_heads: int, w_dim: int,
                 pattern: Optional[Sequence[tuple[int, int]]], mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 backend: str = "auto"):
        super().__init__()
        self.resolution, self.dim, self.num_heads = resolution, dim, num_heads

        def attention() -> nn.Module:
            if pattern is None:
                return RelativePositionAttention(dim, num_heads, resolution, qkv_bias)
            return HydraNeighborhoodAttention(dim, num_heads, pattern, qkv_bias, backend=backend)

        self.blocks = nn.ModuleList(StyleBlock(dim, w_dim, attention(), mlp_ratio) for _ in range(2))
        self.blocks.apply(_init_linear)
        self.upsample = TokenUpsample(dim, out_dim) if out_dim is not None else None
        if self.upsample is not None:
            self.upsample.apply(_init_linear)
        # A stage emits RGB after its upsampling: the skip grows with it, except after the last stage.
        self.to_rgb = ToRGB(out_dim or dim, upsample_skip=out_dim is not None and resolution > 4)

    def forward(self, x: Tensor, w0: Tensor, w1: Tensor, img: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        x = self.blocks[1](self.blocks[0](x, w0), w1)
        if self.upsample is not None:
            x = self.upsample(x)
        return x, self.to_rgb(x, img)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, dim={self.dim}, heads={self.num_heads}"


class SynthesisNetwork(nn.Module):
    """ws ``[B, num_ws, w_dim]`` -> images ``[B, 3, size, size]`` in the [-1, 1] scale.

    Stage ``i`` (resolution ``4 * 2**i``) reads ``ws[:, 2i]`` in its first block and ``ws[:, 2i+1]`` in its
    second. ``channels``, ``num_heads`` and ``patterns`` hold one entry per stage (``patterns[0]`` is None:
    the 4x4 stage attends fully).
    """

    def __init__(self, size: int, w_dim: int, channels: Sequence[int], num_heads: Sequence[int],
                 patterns: Sequence[Optional[Sequence[tuple[int, int]]]], mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.size, self.w_dim = size, w_dim
        self.const = nn.Parameter(torch.randn(4, 4, channels[0]))  # [H, W, C]
        out_dims = list(channels[1:]) + [None]
        self.stages = nn.ModuleList(
            SynthesisStage(4 * 2 ** i, channels[i], out_dims[i], num_heads[i], w_dim, patterns[i], mlp_ratio,
                           qkv_bias, backend)
            for i in range(len(channels)))
        self.num_ws = 2 * len(self.stages)

    def forward(self, ws: Tensor) -> Tensor:
        assert ws.shape[1:] == (self.num_ws, self.w_dim), \
            f"ws must be [B, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}"
        x, img = self.const.expand(ws.shape[0], -1, -1, -1), None
        for i, stage in enumerate(self.stages):
            x, img = stage(x, ws[:, 2 * i], ws[:, 2 * i + 1], img)
        return img.contiguous()

    def extra_repr(self) -> str:
        return f"size={self.size}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# ---------------------------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """StyleNAT generator: ``G.mapping`` (z -> ws), ``G.synthesis`` (ws -> img), ``G(z)`` both.

    Widths follow StyleGAN's schedule ``C(r) = min(channel_base // r, channel_max)`` (the reference's,
    channel multiplier 2: 512 up to 64 px, 256 at 128, 128 at 256, ...), heads
    ``max(C // head_channels, min_heads)``.

    Args:
        size: output resolution, a power of two >= 8.
        kernels, dilations: per neighborhood-attention stage (resolutions 8, 16, ..., size), the lists of
            kernel sizes and dilations of its head groups; a single entry broadcasts over the other list.
            The 4x4 stage has full attention and takes no entry.
        z_dim, w_dim: latent and style widths.
        mapping_layers, mapping_lr_mul: depth and learning-rate multiplier of the mapping network.
        channel_base, channel_max: the width schedule above.
        head_channels, min_heads: the head-count rule above.
        mlp_ratio: MLP hidden width over the block width.
        qkv_bias: learn a bias in the attention's qkv projection.
        style_mixing_prob: in training mode, the probability that ``G(z)`` mixes in the styles of other
            latents from a random cutoff on (style-mixing regularisation).
        w_avg_beta: EMA decay of the tracked mean w.
        backend: natten_ops backend of the neighborhood attention ("auto", "cpu", "flex", "reference", ...).
        latent_modes: 0 (the paper's): z goes to the mapping as drawn; K >= 2: z is first mapped to a draw of
            a mixture of K Gaussians (:func:`mixture_latents`). Callers still feed ``z ~ N(0, I)``, so seeds,
            truncation and the metrics' sampling are unchanged; an interpolation in z jumps where its first
            coordinate crosses into another component.
    """

    def __init__(self, size: int = 256, kernels: Sequence[Sequence[int]] = ((7,),) * 6,
                 dilations: Sequence[Sequence[int]] = ((1,), (1, 2), (1, 4), (1, 8), (1, 16), (1, 32)),
                 z_dim: int = 512, w_dim: int = 512, mapping_layers: int = 8, mapping_lr_mul: float = 0.01,
                 channel_base: int = 32768, channel_max: int = 512, head_channels: int = 32, min_heads: int = 4,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, style_mixing_prob: float = 0.0,
                 w_avg_beta: float = 0.995, backend: str = "auto", latent_modes: int = 0):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        if not 0 <= style_mixing_prob <= 1:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {style_mixing_prob}")
        resolutions = [2 ** i for i in range(2, int(math.log2(size)) + 1)]
        channels = [min(channel_base // r, channel_max) for r in resolutions]
        num_heads = [max(c // head_channels, min_heads) for c in channels]
        patterns = [None] + _check_patterns(resolutions[1:], kernels, dilations, num_heads[1:])
        for r, c, h in zip(resolutions, channels, num_heads):
            if c % h:
                raise ValueError(f"stage {r}x{r}: {c} channels (channel_base={channel_base}, "
                                 f"channel_max={channel_max}) do not split into {h} heads")
            if r > 4 and (c % 4 or c < 8):
                raise ValueError(f"stage {r}x{r}: the position encoding needs a multiple of 4 channels >= 8, got {c}")
        self.size, self.z_dim, self.w_dim = size, z_dim, w_dim
        self.style_mixing_prob = style_mixing_prob
        self.synthesis = SynthesisNetwork(size, w_dim, channels, num_heads, patterns, mlp_ratio, qkv_bias, backend)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_mul, w_avg_beta,
                                      latent_modes)

    def forward(self, z: Tensor, psi: float = 1.0, cutoff: Optional[int] = None,
                update_w_avg: Optional[bool] = None) -> Tensor:
        """``[B, z_dim]`` -> images ``[B, 3, size, size]`` in the [-1, 1] scale.

        ``psi``, ``cutoff``, ``update_w_avg``: see :meth:`MappingNetwork.forward`. In training mode,
        styles are mixed with probability ``style_mixing_prob``.
        """
        ws = self.mapping(z, psi, cutoff, update_w_avg)
        if self.training and self.style_mixing_prob > 0:
            ws = self.mix_styles(ws, psi, cutoff)
        return self.synthesis(ws)

    def mix_styles(self, ws: Tensor, psi: float = 1.0, cutoff: Optional[int] = None) -> Tensor:
        """With probability ``style_mixing_prob``: ``ws[:, c:]`` <- the ws of fresh latents, with
        ``c ~ U{1, ..., num_ws - 1}`` (one draw per batch, as StyleGAN2). Otherwise ``ws`` unchanged.

        Decided on the device without reading the draws back (no host sync, no graph break under
        ``torch.compile``): the fresh ws are always computed and selected per style input."""
        mix = torch.rand((), device=ws.device) < self.style_mixing_prob
        c = torch.randint(1, self.num_ws, (), device=ws.device)
        other = self.mapping(torch.randn(ws.shape[0], self.z_dim, device=ws.device), psi, cutoff, update_w_avg=False)
        take_other = mix & (torch.arange(self.num_ws, device=ws.device) >= c)  # [num_ws]
        return torch.where(take_other[None, :, None], other, ws)

    def extra_repr(self) -> str:
        return f"size={self.size}, z_dim={self.z_dim}, w_dim={self.w_dim}, style_mixing_prob={self.style_mixing_prob}"


def broadcast_pattern(kernel_sizes: Sequence[int], dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Pair kernel sizes with dilations; a single entry on either side broadcasts over the other."""
    kernel_sizes, dilations = list(kernel_sizes), list(dilations)
    if len(kernel_sizes) == 1:
        kernel_sizes = kernel_sizes * len(dilations)
    if len(dilations) == 1:
        dilations = dilations * len(kernel_sizes)
    if len(kernel_sizes) != len(dilations):
        raise ValueError(f"kernel_sizes {kernel_sizes} and dilations {dilations} must have the same length "
                         "(or one of them a single entry)")
    return list(zip(kernel_sizes, dilations))


def _check_patterns(resolutions: Sequence[int], kernels, dilations, num_heads) -> list[list[tuple[int, int]]]:
    """Per neighborhood-attention stage, the (kernel, dilation) of each head group; ValueError naming the
    stage for anything that cannot run."""
    for name, value in (("kernels", kernels), ("dilations", dilations)):
        if len(value) != len(resolutions):
            raise ValueError(f"{name} needs one entry per neighborhood-attention stage "
                             f"{[f'{r}x{r}' for r in resolutions]}, got {len(value)}: {value}")
    patterns = []
    for r, k, d, h in zip(resolutions, kernels, dilations, num_heads):
        try:
            pattern = broadcast_pattern(k, d)
        except ValueError as err:
            raise ValueError(f"stage {r}x{r}: {err}") from None
        for kernel, dilation in pattern:
            if kernel < 2 or kernel % 2 == 0 or dilation < 1:
                raise ValueError(f"stage {r}x{r}: kernel sizes must be odd and > 1 and dilations >= 1, "
                                 f"got kernel {kernel}, dilation {dilation}")
            if kernel * dilation > r:
                raise ValueError(f"stage {r}x{r}: kernel {kernel} x dilation {dilation} = {kernel * dilation} "
                                 f"is larger than the {r}x{r} feature map")
        if len(pattern) > h:
            raise ValueError(f"stage {r}x{r}: {len(pattern)} head groups {pattern} but only {h} heads")
        patterns.append(pattern)
    return patterns


# ---------------------------------------------------------------------------------------------
# Presets: architecture arguments only. Lists run over the neighborhood-attention stages 8, 16, ...

_FFHQ_DILATIONS = [[1]] + [[1, 2 ** i] for i in range(1, 8)]  # 8: (7, 1); r >= 16: half (7, 1), half (7, r/8)

PRESETS: dict[str, dict] = {
    # FFHQ 256 (FID 2.046): 48,921,000 parameters.
    "ffhq256": dict(size=256, kernels=[[7]] * 6, dilations=_FFHQ_DILATIONS[:6]),
    # FFHQ 1024 (FID 4.174): 49,452,934 parameters.
    "ffhq1024": dict(size=1024, kernels=[[7]] * 8, dilations=_FFHQ_DILATIONS[:8]),
    # LSUN Church 256 (FID 3.40). UNVERIFIED: the published config is lost; this is the best public
    # recollection (min_heads 8, "pyramid" dilations). Heads do not split evenly over the groups.
    "church256": dict(size=256, min_heads=8, kernels=[[7]] * 6,
                      dilations=[[1], [1, 2], [1, 2, 4], [1, 2, 4, 8], [1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 32]]),
    # 32x32 for CPU runs and tests: widths 128, 128, 64, 32 at 4, 8, 16, 32 px; 4 heads; 4 mapping layers of 128.
    "demo": dict(size=32, z_dim=128, w_dim=128, mapping_layers=4, channel_base=1024, channel_max=128,
                 kernels=[[7]] * 3, dilations=_FFHQ_DILATIONS[:3]),
}


def create_generator(name: str, **overrides) -> Generator:
    """Build a preset (``ffhq256``, ``ffhq1024``, ``church256``, ``demo``); any keyword overrides it."""
    if name not in PRESETS:
        raise ValueError(f"unknown generator preset {name!r}; choose from {sorted(PRESETS)}")
    return Generator(**{**PRESETS[name], **overrides})
