"""The dataset base class: item bookkeeping, the image transform, x-flip, labels and bad-data policy.

A source (folder, zip, LMDB, built-in) lists its items once at construction and knows how to read one;
everything else lives here so the formats stay a few lines each.

X-flip follows StyleGAN2-ADA's ``--mirror``: it doubles the dataset, index ``i + N`` being item ``i``
mirrored. The sampler then decides which copy is shown when, so flips are deterministic given the seed
and restored exactly on resume (no per-worker random state).
"""

from __future__ import annotations

import copy
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from stylenat.data.transforms import check_filter, fit_square, to_tensor

OnError = Literal["skip", "raise"]

# What PIL (and zipfile, for a damaged member) raise on bad image data.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, Image.DecompressionBombError)


class UnreadableImageError(RuntimeError):
    """An image that cannot be decoded. ``where`` names the file (or archive member / LMDB key)."""

    def __init__(self, where: str, reason: BaseException):
        super().__init__(f"unreadable image {where}: {type(reason).__name__}: {reason}")
        self.where = where


class BadImageWarning(UserWarning):
    """Issued once per unreadable image skipped with ``on_error="skip"``; the message names the file."""


class ImageDataset(Dataset):
    """Square RGB images as float32 ``[3, R, R]`` in ``[-1, 1]``, or ``(image, label)`` with ``use_labels``.

    Args:
        source: the path (or built-in name) the items come from, used in messages.
        resolution: output side ``R`` in pixels.
        filter: resize filter name (``lanczos``, ``box``, ``bicubic``, ...; see ``RESIZE_FILTERS``).
        center_crop: crop non-square images to their centred square; if False they are rejected.
        xflip: double the dataset with mirrored copies (index ``i + N`` is item ``i`` flipped).
        use_labels: return ``(image, label)`` pairs; the source must have labels.
        on_error: ``"skip"`` reports an unreadable image (``BadImageWarning`` naming its path) and serves
            the next readable item instead; ``"raise"`` raises ``UnreadableImageError``.

    Images smaller than ``R`` are upscaled, with a warning the first time (usually a sign of the wrong
    dataset for the resolution).

    Subclasses call ``super().__init__`` first (options are checked before any slow scan), then
    ``_set_items``, and implement ``_read(item) -> PIL.Image`` and ``_where(item) -> str``.
    """

    def __init__(self, source: str, resolution: int, *, filter: str = "lanczos", center_crop: bool = True,
                 xflip: bool = False, use_labels: bool = False, on_error: OnError = "skip"):
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.source = str(source)
        self.resolution = resolution
        self.filter = check_filter(filter)
        self.center_crop = center_crop
        self.xflip = xflip
        self.use_labels = use_labels
        self.on_error = on_error
        self.labels: list[int] | None = None
        self.classes: list[str] | None = None
        self._items: list[Any] = []
        self._bad: set[int] = set()  # positions found unreadable in this process
        self._warned_upscale = False

    # -- for subclasses -------------------------------------------------------------------------------

    def _set_items(self, items: Sequence[Any], labels: Sequence[int] | None = None,
                   classes: Sequence[str] | None = None) -> None:
        """Record the items (non-empty) and, when the source has them, one integer label per item."""
        assert items, "sources raise their own 'no images' error before this"
        if labels is not None and len(labels) != len(items):
            raise ValueError(f"{self.source}: {len(labels)} labels for {len(items)} images")
        if self.use_labels and labels is None:
            raise ValueError(f"use_labels=True but {self.source} has no labels "
                             "(a folder needs class sub-folders, a zip a dataset.json with labels)")
        self._items = list(items)
        self.labels = None if labels is None else [int(label) for label in labels]
        if self.labels is not None and classes is None:
            classes = [str(c) for c in range(max(self.labels) + 1)]
        self.classes = None if classes is None else list(classes)

    def _read(self, item: Any) -> Image.Image:
        """Decode one item to a loaded PIL image (any size, RGB)."""
        raise NotImplementedError

    def _where(self, item: Any) -> str:
        """Name one item for messages: its path, archive member or key."""
        raise NotImplementedError

    # -- public ----------------------------------------------------------------------------------------

    @property
    def num_images(self) -> int:
        """Distinct images (``len(self)`` counts mirrored copies too)."""
        return len(self._items)

    @property
    def num_classes(self) -> int:
        """Number of classes; raises ``ValueError`` for an unlabelled dataset."""
        if self.classes is None:
            raise ValueError(f"{self.source} has no labels")
        return len(self.classes)

    def where(self, position: int) -> str:
        """The path (or member / key) of image ``position`` in ``[0, num_images)``."""
        return self._where(self._items[position])

    def load_image(self, position: int) -> Image.Image:
        """Image ``position`` in ``[0, num_images)``, RGB, cropped and resized to ``R x R``, not flipped.

        Raises ``UnreadableImageError`` for bad data whatever ``on_error`` says (``prepare`` uses this to
        leave bad files out).
        """
        item = self._items[position]
        try:
            image = self._read(item)
        except DECODE_ERRORS as error:
            raise UnreadableImageError(self._where(item), error) from error
        if min(image.size) < self.resolution and not self._warned_upscale:
            self._warned_upscale = True
            warnings.warn(f"{self.source}: upscaling images smaller than the resolution {self.resolution}, "
                          f"e.g. {self._where(item)} ({image.width}x{image.height}); warned once", stacklevel=2)
        return fit_square(image, self.resolution, self.filter, self.center_crop, self._where(item))

    def subset(self, positions: Sequence[int], *, xflip: bool | None = None) -> ImageDataset:
        """A copy holding only the images at ``positions`` (and with ``xflip`` changed if given)."""
        view = copy.copy(self)
        view._items = [self._items[p] for p in positions]
        view.labels = None if self.labels is None else [self.labels[p] for p in positions]
        view._bad = set()
        if xflip is not None:
            view.xflip = xflip
        return view

    def __len__(self) -> int:
        return len(self._items) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        flip, position = divmod(index % len(self), len(self._items))  # flip is 1 for the mirrored copy
        for step in range(len(self._items)):
            candidate = (position + step) % len(self._items)
            if candidate in self._bad:
                continue
            try:
                image = self.load_image(candidate)
            except UnreadableImageError as error:
                if self.on_error == "raise":
                    raise
                self._bad.add(candidate)
                warnings.warn(f"skipping {error}", BadImageWarning, stacklevel=2)
                continue
            tensor = to_tensor(image, xflip=bool(flip))
            return (tensor, self.labels[candidate]) if self.use_labels else tensor
        raise RuntimeError(f"{self.source}: none of its {len(self._items)} images is readable")

    def __repr__(self) -> str:
        labels = f", classes={len(self.classes)}" if self.classes else ""
        return (f"{type(self).__name__}({self.source!r}, images={self.num_images}{labels}, "
                f"resolution={self.resolution}, filter={self.filter}, center_crop={self.center_crop}, "
                f"xflip={self.xflip}, use_labels={self.use_labels}, on_error={self.on_error})")


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic per-class split of positions ``0..len(labels)-1`` into (train, val), both sorted.

    Each class contributes ``round(val_fraction * count)`` of its items, chosen by a ``torch.randperm``
    seeded with ``seed``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    labels_t = torch.as_tensor(list(labels))
    val: list[int] = []
    for label in torch.unique(labels_t).tolist():
        members = torch.nonzero(labels_t == label).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        val += shuffled[: round(val_fraction * len(members))].tolist()
    val_set = set(val)
    train = [p for p in range(len(labels_t)) if p not in val_set]
    if not train or not val:
        raise ValueError(f"val_fraction={val_fraction} of {len(labels_t)} images leaves an empty split")
    return train, sorted(val)
