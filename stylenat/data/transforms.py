"""Image decoding and the one transform every dataset applies.

decode -> RGB -> centre crop to a square -> resize to ``resolution`` with a named filter
-> (optional x-flip) -> float tensor ``[3, R, R]`` in ``[-1, 1]``.

The resize filter is named because it changes the numbers people report: FID on FFHQ-256 differs by
about a point between ``box`` and ``lanczos`` downsampling, so the name travels into configs and into the
``dataset.json`` that :mod:`stylenat.data.prepare` writes.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

RESIZE_FILTERS: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "nearest": Image.Resampling.NEAREST,
}


def check_filter(name: str) -> str:
    """Return ``name`` if it is a known resize filter, else raise a ``ValueError`` listing them."""
    if name not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize filter {name!r}; choose one of {sorted(RESIZE_FILTERS)}")
    return name


ALPHA_BACKGROUND = ("white", (255, 255, 255))
"""Transparent pixels are composited on this colour (name, RGB): dropping the alpha channel instead would show
whatever colour happens to be stored under them, often black."""


def decode_image(source: bytes | str | os.PathLike | BinaryIO) -> Image.Image:
    """Decode encoded image bytes, a file or an open binary file into a fully loaded RGB image; images with
    transparency (RGBA, LA, palette with a transparent colour) are composited on :data:`ALPHA_BACKGROUND`.

    Raises what PIL raises for bad data (``OSError`` for unreadable or truncated files, sometimes
    ``SyntaxError``/``ValueError``/``EOFError``); callers turn those into a report naming the file.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()  # decode now: a truncated file fails here, not later in a worker
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND[1] + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def fit_square(image: Image.Image, resolution: int, filter: str, center_crop: bool, where: str) -> Image.Image:
    """Centre-crop ``image`` to its largest square, then resize to ``resolution`` x ``resolution``.

    A non-square image with ``center_crop=False`` is rejected (``ValueError`` naming ``where``) rather than
    stretched. An image already at the resolution is returned unchanged.
    """
    width, height = image.size
    if width != height:
        if not center_crop:
            raise ValueError(f"{where}: image is {width}x{height}, not square; crop it to its centre square with "
                             "--center-crop (in a training config: data.center_crop: true)")
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), resample=RESIZE_FILTERS[filter])
    return image


def to_tensor(image: Image.Image, xflip: bool = False) -> Tensor:
    """RGB image ``H x W`` -> float32 tensor ``[3, H, W]`` in ``[-1, 1]`` (0 -> -1, 255 -> 1), optionally mirrored."""
    if xflip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.array(image, dtype=np.uint8)  # [H, W, 3], a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div_(127.5).sub_(1.0)
