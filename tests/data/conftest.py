"""Small generated datasets in every supported format, built in ``tmp_path``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from data_helpers import encode, noise_image, write_lmdb, write_zip


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Six images of mixed formats and sizes in nested folders, plus a file that is not an image."""
    root = tmp_path / "images"
    files = {
        "a/x0.png": ("png", (24, 24)),
        "a/deeper/x1.jpg": ("jpeg", (32, 20)),
        "b/x2.jpeg": ("jpeg", (20, 32)),
        "b/x3.webp": ("webp", (24, 24)),
        "x4.bmp": ("bmp", (16, 16)),
        "x5.PNG": ("png", (40, 40)),
    }
    for i, (name, (fmt, size)) in enumerate(files.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(noise_image(i, size), fmt))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Three classes (``cat``, ``dog``, ``owl``) of ten 16x16 images each, one class nested deeper."""
    root = tmp_path / "classes"
    for c, name in enumerate(["cat", "dog", "owl"]):
        for i in range(10):
            path = root / name / ("sub" if name == "owl" else "") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise_image(100 * c + i, (16, 16)).save(path)
    return root


@pytest.fixture
def stylegan_zip(tmp_path: Path) -> Path:
    """Five 16x16 PNGs in StyleGAN's layout with ``dataset.json`` labels ``i % 3``."""
    names = [f"00000/img{i:08d}.png" for i in range(5)]
    return write_zip(tmp_path / "data.zip", {n: encode(noise_image(i, (16, 16))) for i, n in enumerate(names)},
                     labels=[[n, i % 3] for i, n in enumerate(names)])


@pytest.fixture
def lsun_lmdb(tmp_path: Path) -> Path:
    """An LSUN-style LMDB of four webp/jpeg images."""
    values = [encode(noise_image(i, (20, 16)), "webp" if i % 2 else "jpeg") for i in range(4)]
    return write_lmdb(tmp_path / "church_outdoor_train_lmdb", values)


@pytest.fixture
def foreign_lmdb(tmp_path: Path) -> Path:
    """An LMDB that is not LSUN's layout: its values are pickled arrays."""
    return write_lmdb(tmp_path / "features_lmdb", [pickle.dumps(np.zeros(4)) for _ in range(3)])
