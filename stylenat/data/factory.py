"""``open_dataset``: one entry point that picks the reader from the path (or a built-in name)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from stylenat.data.base import ImageDataset, OnError
from stylenat.data.digits import DigitsDataset
from stylenat.data.formats import ImageFolderDataset, LSUNDataset, ZipDataset

BUILTIN_DATASETS: dict[str, type[ImageDataset]] = {"digits": DigitsDataset}

Kind = Literal["builtin", "folder", "zip", "lmdb"]


def dataset_kind(path_or_name: str | os.PathLike) -> Kind:
    """Which reader ``open_dataset`` uses for ``path_or_name``; cheap, so callers can fail fast.

    An existing path wins over a built-in name. Raises ``FileNotFoundError`` for a path that does not
    exist (listing the built-in names) and ``ValueError`` for a file that is not a dataset.
    """
    path = Path(path_or_name)
    if not path.exists():
        if str(path_or_name) in BUILTIN_DATASETS:
            return "builtin"
        raise FileNotFoundError(f"dataset path {str(path)!r} does not exist "
                                f"(nor is it a built-in dataset: {', '.join(BUILTIN_DATASETS)})")
    if path.is_dir():
        return "lmdb" if (path / "data.mdb").is_file() else "folder"
    if path.suffix.lower() == ".zip":
        return "zip"
    if path.suffix == ".mdb":
        return "lmdb"
    raise ValueError(f"dataset path {str(path)!r} is a file but not a .zip or an LMDB's data.mdb; "
                     "expected a folder of images, a zip of images or an LSUN LMDB folder")


def open_dataset(path_or_name: str | os.PathLike, resolution: int, *, xflip: bool = False,
                 filter: str = "lanczos", center_crop: bool = True, use_labels: bool = False,
                 on_error: OnError = "skip", split: str = "all", class_folders: bool | None = None) -> ImageDataset:
    """Open a folder of images, a zip, an LSUN LMDB or a built-in dataset (``"digits"``).

    Items are float32 ``[3, resolution, resolution]`` in ``[-1, 1]``, or ``(image, label)`` with
    ``use_labels``; see :class:`ImageDataset` for ``xflip``, ``filter``, ``center_crop``, ``on_error``.

    Args:
        split: ``"train"``/``"test"``/``"all"`` for built-in datasets that have splits; others take "all".
        class_folders: folders only, sub-folders are classes; defaults to ``use_labels``.
    """
    options = dict(xflip=xflip, filter=filter, center_crop=center_crop, use_labels=use_labels, on_error=on_error)
    kind = dataset_kind(path_or_name)
    if kind == "builtin":
        return BUILTIN_DATASETS[str(path_or_name)](resolution, split=split, **options)
    if split != "all":
        raise ValueError(f"split={split!r} applies to built-in datasets only ({', '.join(BUILTIN_DATASETS)}); "
                         f"{str(path_or_name)!r} is a {kind}: split it with a val_fraction or a separate val path")
    if kind == "folder":
        folders = use_labels if class_folders is None else class_folders
        return ImageFolderDataset(path_or_name, resolution, class_folders=folders, **options)
    if kind == "zip":
        return ZipDataset(path_or_name, resolution, **options)
    return LSUNDataset(path_or_name, resolution, **options)
