"""``digits``: the built-in demo dataset, real handwritten digits that ship with scikit-learn.

The 1,797 8x8 grey scans of UCI's "Optical Recognition of Handwritten Digits" (``sklearn.datasets.
load_digits``, bundled with scikit-learn, no download), ink values 0..16 mapped to white-on-black
0..255, upscaled once to 32x32 with a bicubic filter (the dataset's native size from then on) and then,
like any other source, resized to the requested resolution with the configured filter. RGB (the grey
value in all three channels), labels 0-9.

Splits are fixed: a per-class 80/20 split with seed 0 (``stratified_split``), 1,438 train / 359 test.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from PIL import Image

from stylenat.data.base import ImageDataset, stratified_split

NATIVE_RESOLUTION = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0

Split = Literal["train", "test", "all"]


class DigitsDataset(ImageDataset):
    """scikit-learn's handwritten digits as ``[3, R, R]`` float32 images in ``[-1, 1]`` (ink is +1).

    Args:
        resolution: output side; 32 is the native size.
        split: ``"train"`` (1,438), ``"test"`` (359) or ``"all"`` (1,797).
        options: see :class:`ImageDataset` (``xflip`` is allowed but mirrors digits, rarely wanted).
    """

    SPLITS = ("train", "test", "all")

    def __init__(self, resolution: int = NATIVE_RESOLUTION, *, split: Split = "all", **options: Any):
        from sklearn.datasets import load_digits  # scikit-learn is slow to import; only load it when used

        super().__init__("digits", resolution, **options)
        if split not in self.SPLITS:
            raise ValueError(f"digits split must be one of {self.SPLITS}, got {split!r}")
        digits = load_digits()
        pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [1797, 8, 8]
        labels = digits.target.tolist()
        positions = range(len(labels))
        if split != "all":
            train, test = stratified_split(labels, TEST_FRACTION, seed=SPLIT_SEED)
            positions = train if split == "train" else test
        self.split = split
        self._pixels = pixels
        self._set_items(list(positions), [labels[p] for p in positions], [str(d) for d in range(10)])

    def _read(self, item: int) -> Image.Image:
        image = Image.fromarray(self._pixels[item])  # uint8 [8, 8] -> mode "L"
        side = NATIVE_RESOLUTION
        return image.resize((side, side), resample=Image.Resampling.BICUBIC).convert("RGB")

    def _where(self, item: int) -> str:
        return f"digits[{item}]"
