"""Pixel spaces: the scale in which images meet the networks.

Everything that leaves the project (exports, ``generate``, ``fid``, image grids) holds images in [-1, 1].
The reference implementation trains G and D on ImageNet-normalised pixels instead, ``(u - mean) / std``
with ``u`` in [0, 1] and the ImageNet mean / std per channel; the D-side recipe (R1 gamma, spectral norm's
slope cap, bCR's brightness step, fill colour and saturation pivot) was tuned in that space.

    minus1_1   x in [-1, 1]
    imagenet   (((x + 1) / 2) - mean) / std        (x in [-1, 1]), per channel

:func:`to_pixel_space` maps [-1, 1] images into a space. A generator whose output is in the ImageNet space
becomes one whose output is in [-1, 1] by an exact change of its ToRGB parameters
(:func:`imagenet_output_fold`): the image is a linear sum of FIR-upsampled per-stage RGB
(``img = sum_s up^(n_s)(rgb_s)``, the last stage's RGB added as is), so scaling every ToRGB weight and bias
by ``2 * std`` and adding ``2 * mean - 1`` once, to the last stage's RGB bias (never upsampled, so no FIR
border effect touches it), maps the output ``x`` to ``2 * (x * std + mean) - 1``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_SPACES = ("minus1_1", "imagenet")


def check_pixel_space(name: str, what: str = "pixel_space") -> str:
    """Return ``name`` if it is a known pixel space, else raise a ``ValueError`` naming ``what``."""
    if name not in PIXEL_SPACES:
        raise ValueError(f"{what} must be one of {', '.join(PIXEL_SPACES)}, got {name!r}")
    return name


def _per_channel(values: tuple[float, ...], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def to_pixel_space(images: Tensor, space: str) -> Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> the same images in ``space`` (differentiable)."""
    if check_pixel_space(space) == "minus1_1":
        return images
    return ((images + 1) / 2 - _per_channel(IMAGENET_MEAN, images)) / _per_channel(IMAGENET_STD, images)


def imagenet_output_fold(num_stages: int) -> dict[str, tuple[Tensor, Tensor]]:
    """The affine change ``p -> p * scale + shift`` of a generator's ToRGB parameters (by state-dict name,
    ``scale`` and ``shift`` broadcastable to the parameter) that turns ImageNet-space output into [-1, 1]
    output (module doc). Parameters not listed are unchanged."""
    scale = 2 * torch.tensor(IMAGENET_STD)
    zero = torch.zeros(3)
    fold = {}
    for i in range(num_stages):
        prefix = f"synthesis.stages.{i}.to_rgb."
        fold[prefix + "proj.weight"] = (scale[:, None], zero[:, None])
        fold[prefix + "proj.bias"] = (scale, zero)
        fold[prefix + "bias"] = (scale, 2 * torch.tensor(IMAGENET_MEAN) - 1 if i == num_stages - 1 else zero)
    return fold


def fold_output(params: Mapping[str, Tensor], fold: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """``params`` with every entry named in ``fold`` replaced by ``p * scale + shift`` (new tensors)."""
    out = dict(params)
    for name, (scale, shift) in fold.items():
        p = out[name]
        out[name] = p * scale.to(p) + shift.to(p)
    return out
