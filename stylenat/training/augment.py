"""The augmentations of balanced consistency regularisation (bCR), as the StyleNAT reference applies them
(DiffAugment's ops plus a horizontal flip), each drawn independently per image:

    random h-flip (p = 0.5)
    integer translation up to 1/8 of the size in x and y, zero fill
    brightness  x + U(-0.5, 0.5)
    saturation  (x - mean_c x) * U(0, 2) + mean_c x
    contrast    (x - mean_chw x) * U(0.5, 1.5) + mean_chw x
    cutout      a square of half the size, centred anywhere (clipped at the borders), set to 0

Images are ``[B, C, H, W]`` in the [-1, 1] scale (0, the fill value, is mid-grey). Randomness comes from
the global torch generators of the images' device; the GAN module seeds them per step. Every op is
differentiable with respect to the images.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _uniform(x: Tensor, low: float, high: float) -> Tensor:
    """One ``U(low, high)`` draw per image, shaped ``[B, 1, 1, 1]`` to broadcast."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * (high - low) + low


def random_xflip(x: Tensor, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    return torch.where(flip, x.flip(3), x)


def random_translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by integers in ``[-s, s]`` (``s = round(ratio * size)``) along y and x; zero fill."""
    B, C, H, W = x.shape
    shift_y, shift_x = int(H * ratio + 0.5), int(W * ratio + 0.5)
    ty = torch.randint(-shift_y, shift_y + 1, (B, 1, 1), device=x.device)
    tx = torch.randint(-shift_x, shift_x + 1, (B, 1, 1), device=x.device)
    rows = torch.arange(H, device=x.device).view(1, H, 1) - ty  # source row of each output pixel [B, H, 1]
    cols = torch.arange(W, device=x.device).view(1, 1, W) - tx  # [B, 1, W]
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)  # [B, H, W]
    index = (rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)).view(B, 1, H * W).expand(B, C, H * W)
    shifted = x.flatten(2).gather(2, index).view(B, C, H, W)
    return shifted * inside.unsqueeze(1).to(x.dtype)


def random_brightness(x: Tensor) -> Tensor:
    """Add ``U(-0.5, 0.5)`` to every pixel of an image."""
    return x + _uniform(x, -0.5, 0.5)


def random_saturation(x: Tensor) -> Tensor:
    """Scale the deviation from the per-pixel channel mean by ``U(0, 2)``."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * _uniform(x, 0.0, 2.0) + mean


def random_contrast(x: Tensor) -> Tensor:
    """Scale the deviation from the image mean by ``U(0.5, 1.5)``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, 0.5, 1.5) + mean


def random_cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero a ``round(ratio * size)`` square per image whose centre is uniform over the image (DiffAugment's
    placement: the square may hang over the border and is clipped there)."""
    B, _, H, W = x.shape
    size_y, size_x = int(H * ratio + 0.5), int(W * ratio + 0.5)
    top = torch.randint(0, H + 1 - size_y % 2, (B, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, W + 1 - size_x % 2, (B, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    cut = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)  # [B, H, W]
    return x * (~cut).unsqueeze(1).to(x.dtype)


def bcr_augment(x: Tensor) -> Tensor:
    """The full bCR chain in the reference's order: flip, translation, brightness, saturation, contrast,
    cutout. ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
    x = random_translation(random_xflip(x))
    x = random_contrast(random_saturation(random_brightness(x)))
    return random_cutout(x)
