"""Real images for reference statistics: any dataset of images, a fingerprint, features over DDP.

:func:`dataset_features` takes any map-style dataset (``len`` + indexing, e.g. the data package's
folder / zip / LMDB datasets) or any iterable. Items are images ``[3, H, W]`` (tensor or array), or
tuples whose first element is one: uint8 in [0, 255], or float in [-1, 1] as the data package gives
them (``u / 127.5 - 1``), which :func:`~stylenat.metrics.samples.to_uint8` turns back into exactly
the original bytes. :class:`ImageFiles` is a minimal reader for a folder or a
zip, and :func:`fingerprint_path` identifies what is on disk so cached statistics are reused only
while the data is unchanged.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Iterable, Sized
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm import tqdm

from stylenat.data.base import DECODE_ERRORS
from stylenat.data.transforms import IMAGE_EXTENSIONS, decode_image
from stylenat.metrics.distributed import gather_features, own_share, rank_and_world, shard
from stylenat.metrics.extractors import FeatureExtractor
from stylenat.metrics.samples import strict_float32, to_uint8

def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``seed9999.png`` before ``seed10000.png``.

    >>> sorted(["seed10000.png", "seed9999.png", "a/seed2.png"], key=natural_key)
    ['a/seed2.png', 'seed9999.png', 'seed10000.png']
    """
    parts = re.split(r"(\d+)", name)  # text, digits, text, ...: every position holds one kind
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name  # name: ties (01 vs 1)


class ImageFiles(Dataset):
    """The images of a folder (recursive) or a zip, in natural order of their relative paths (``seed9999.png``
    before ``seed10000.png``, so the first N of ``generate --seeds 0-49999`` are seeds 0..N-1), as uint8
    ``[3, H, W]`` RGB, decoded as the data package decodes (:func:`~stylenat.data.transforms.decode_image`:
    transparency composited on white)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._is_dir = self.path.is_dir()
        if self._is_dir:
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        elif zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
        else:
            raise FileNotFoundError(f"{self.path} is neither a folder nor a zip of images")
        self.names = sorted((n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)), key=natural_key)
        if not self.names:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.path}")
        self._zip: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Tensor:
        rgb = np.array(self._read(i, decode_image))
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()

    def image_size(self, i: int) -> tuple[int, int]:
        """``(width, height)`` of image ``i``, from its header (the pixels are not decoded)."""
        def header_size(source) -> tuple[int, int]:
            with Image.open(source) as img:
                return img.size

        return self._read(i, header_size)

    def _read(self, i: int, read):
        """``read(file)`` of image ``i`` (its path, or an open member of the zip); unreadable files raise
        ``OSError`` naming them."""
        name = self.names[i]
        try:
            if self._is_dir:
                return read(self.path / name)
            self._zip = self._zip or zipfile.ZipFile(self.path)
            with self._zip.open(name) as f:
                return read(f)
        except DECODE_ERRORS as e:
            raise OSError(f"cannot read image {name!r} in {self.path}: {e}") from e

    def __getstate__(self) -> dict:  # DataLoader workers open their own zip handle
        return {**self.__dict__, "_zip": None}


def fingerprint_path(path: str | Path, content: bool = False) -> str:
    """16 hex digits that change whenever the data at ``path`` changes.

    A folder (image folder, LMDB folder, ...): every file's relative path, size and modification
    time, or its SHA-256 with ``content=True`` (slower; survives copies). A zip: each member's name,
    size and CRC (content based). Any other file: its name, size and mtime, or its SHA-256.
    """
    path = Path(path)
    h = hashlib.sha256(b"stylenat-fingerprint-v1\0")

    def add_file(p: Path, rel: str) -> None:
        st = p.stat()
        h.update(f"{rel}\0{st.st_size}\0".encode())
        if content:
            digest = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            h.update(digest.digest())
        else:
            h.update(f"{st.st_mtime_ns}\0".encode())

    if path.is_dir():
        for p in sorted(p for p in path.rglob("*") if p.is_file()):
            add_file(p, p.relative_to(path).as_posix())
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\0".encode())
    elif path.is_file():
        add_file(path, path.name)
    else:
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or folder")
    return h.hexdigest()[:16]


def collate_images(items: list) -> Tensor:
    """Stack dataset items into uint8 ``[B, 3, H, W]``; a tuple/list item contributes its first element."""
    images = [torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item) for item in items]
    for img in images:
        if img.dtype not in (torch.uint8, torch.float32, torch.float64) or img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"dataset items must be images [3, H, W], uint8 in [0, 255] or float in [-1, 1]; "
                             f"got {img.dtype} {tuple(img.shape)}")
        if img.shape != images[0].shape:
            raise ValueError(f"dataset images differ in size: {tuple(images[0].shape)} and {tuple(img.shape)}")
    batch = torch.stack(images)
    return batch if batch.dtype == torch.uint8 else to_uint8(batch)


def _my_batches(dataset: Iterable, batch_size: int, num_workers: int, max_items: int | None,
                rank: int, world: int) -> tuple[Iterable[tuple[np.ndarray, Tensor]], int | None]:
    """This rank's batches as (global indices, images), and how many images this rank gets (if known)."""
    if isinstance(dataset, Sized) and hasattr(dataset, "__getitem__") and not isinstance(dataset, IterableDataset):
        mine = shard(min(len(dataset), max_items or len(dataset)), rank, world)
        loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=collate_images)
        starts = range(mine.start, mine.stop, batch_size)
        return ((np.arange(s, s + len(b)), b) for s, b in zip(starts, loader, strict=True)), len(mine)

    def strided() -> Iterable[tuple[np.ndarray, Tensor]]:  # plain iterables: item i goes to rank i % world
        items = ((i, x) for i, x in enumerate(islice(dataset, max_items)) if i % world == rank)
        while batch := list(islice(items, batch_size)):
            yield np.array([i for i, _ in batch]), collate_images([x for _, x in batch])
    return strided(), None


@torch.no_grad()
def dataset_features(dataset: Iterable, extractor: FeatureExtractor, *, resolution: int | None = None,
                     batch_size: int = 64, num_workers: int = 0, max_items: int | None = None,
                     verbose: bool = True) -> np.ndarray:
    """Features ``[N, D]`` of the first ``max_items`` (default all) images of ``dataset``, in order.

    Images must be ``[3, resolution, resolution]`` when ``resolution`` is given; the extractor runs with TF32
    off. Under DDP each rank
    reads its share and all ranks gather the result (every rank must call this).
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 (or None for all), got {max_items}")
    rank, world = rank_and_world()
    batches, count = _my_batches(dataset, batch_size, num_workers, max_items, rank, world)

    def work() -> tuple[np.ndarray, np.ndarray]:
        indices, feats = [np.empty(0, np.int64)], [np.empty((0, extractor.feature_dim), np.float32)]
        with tqdm(total=count, desc=f"{extractor.name} features of the dataset", unit="img",
                  disable=not verbose or rank != 0) as bar:
            for idx, images in batches:
                if resolution is not None and images.shape[2:] != (resolution, resolution):
                    raise ValueError(f"dataset images are {images.shape[2]}x{images.shape[3]}, expected "
                                     f"{resolution}x{resolution}: prepare the dataset at that resolution")
                indices.append(idx)
                feats.append(extractor(images).cpu().numpy())
                bar.update(len(idx))
        return np.concatenate(indices), np.concatenate(feats)

    with strict_float32():
        features = gather_features(*own_share(work))
    if len(features) == 0:
        raise ValueError("the dataset yielded no images")
    return features
