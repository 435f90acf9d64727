"""Builders for small generated datasets (images, zips, LMDBs) used by the data tests."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (24, 24)) -> Image.Image:
    """A random RGB image of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_png(seed: int = 99) -> bytes:
    """A PNG cut off halfway through its pixel data: PIL opens it but fails to load it."""
    data = encode(noise_image(seed, (32, 32)))
    return data[: len(data) // 2]


def write_zip(path: Path, members: dict[str, bytes], labels: list | None | str = "absent") -> Path:
    """A zip of ``members``; ``labels`` other than ``"absent"`` is written as ``dataset.json``."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if labels != "absent":
            archive.writestr("dataset.json", json.dumps({"labels": labels}))
    return path


def write_lmdb(path: Path, values: list[bytes]) -> Path:
    """An LMDB folder keyed like LSUN's (hex SHA-1 ids) holding ``values``."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(hashlib.sha1(str(i).encode()).hexdigest().encode(), value)
    env.close()
    return path
