"""Convert a folder, zip, LSUN LMDB or built-in dataset to a StyleGAN-layout zip.

The output holds ``00000/img00000000.png``, ``00000/img00000001.png``, ... (1,000 per folder) at exactly
``resolution x resolution`` RGB, and a ``dataset.json`` with ``"labels"`` (``[[name, class], ...]`` when
the source has labels, else ``null``, as StyleGAN's ``dataset_tool.py`` writes) and ``"prepare"``: the
source, resolution, resize filter, centre-crop flag, the colour transparent pixels were composited on
(:data:`~stylenat.data.transforms.ALPHA_BACKGROUND`) and the unreadable files left out. Recording the filter
matters: FID differs by about a point between ``box`` and ``lanczos`` downsampling, and
:func:`prepared_filter` reads it back (the metrics warn when it differs from the reference statistics').

The zip is written to a temporary file beside the target and renamed into place, so an interrupted run
never leaves a half-written dataset under the target name.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from stylenat.data.base import OnError, UnreadableImageError
from stylenat.data.factory import open_dataset
from stylenat.data.transforms import ALPHA_BACKGROUND
from stylenat.files import atomic_write

IMAGES_PER_FOLDER = 1000


@dataclass
class PrepareResult:
    """What ``prepare`` wrote: the zip, how many images, the sources it skipped as unreadable, and for a
    folder what its scan left out (:meth:`stylenat.data.formats.FolderScan.summary`)."""

    path: Path
    num_images: int
    skipped: list[str] = field(default_factory=list)
    scan: str = ""  # a folder source: what its scan left out (non-regular files, folders reached again)


def archive_name(index: int) -> str:
    """StyleGAN's member name for image ``index``: ``00012/img00012345.png``."""
    return f"{index // IMAGES_PER_FOLDER:05d}/img{index:08d}.png"


def prepare(src: str | os.PathLike, out_zip: str | os.PathLike, resolution: int, filter: str = "lanczos",
            center_crop: bool = True, force: bool = False, *, class_folders: bool = False,
            on_error: OnError = "skip", progress: bool = True) -> PrepareResult:
    """Write ``src`` as a StyleGAN-layout zip of ``resolution x resolution`` PNGs to ``out_zip``.

    Args:
        src: a folder of images, a zip, an LSUN LMDB folder, or a built-in name (``digits``).
        out_zip: the ``.zip`` to write; an existing file is an error unless ``force``.
        resolution: output side in pixels.
        filter: resize filter name (``lanczos``, ``box``, ...).
        center_crop: crop non-square images to their centre square (else they are rejected).
        class_folders: for a folder source, its sub-folders are classes and become labels.
        on_error: ``"skip"`` leaves unreadable images out (named on the progress bar and in the
            result); ``"raise"`` stops at the first.
        progress: show a tqdm progress bar.
    """
    out = Path(out_zip)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"output {str(out)!r} must end in .zip")
    if out.exists() and not force:
        raise FileExistsError(f"output {str(out)!r} already exists; pass --force to overwrite it")
    dataset = open_dataset(src, resolution, filter=filter, center_crop=center_crop, on_error=on_error,
                           class_folders=class_folders)
    labels: list[list[str | int]] = []
    skipped: list[str] = []
    scan = dataset.scan.summary() if hasattr(dataset, "scan") else ""
    with atomic_write(out) as file, zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive, \
            tqdm(range(dataset.num_images), desc=f"prepare {src}", unit="img", disable=not progress) as bar:
        for position in bar:
            try:
                image = dataset.load_image(position)
            except UnreadableImageError as error:
                if on_error == "raise":
                    raise
                skipped.append(error.where)
                bar.write(f"skipping {error}")
                continue
            name = archive_name(position - len(skipped))
            png = io.BytesIO()
            image.save(png, format="png", compress_level=1)
            archive.writestr(name, png.getvalue())
            if dataset.labels is not None:
                labels.append([name, dataset.labels[position]])
        written = dataset.num_images - len(skipped)
        if written == 0:
            raise ValueError(f"{src}: none of its {dataset.num_images} images is readable")
        meta = {
            "labels": labels if dataset.labels is not None else None,
            "prepare": {"source": str(src), "resolution": resolution, "filter": filter,
                        "center_crop": center_crop, "alpha_background": ALPHA_BACKGROUND[0],
                        "skipped": skipped, **({"scan": scan} if scan else {})},
        }
        archive.writestr("dataset.json", json.dumps(meta))
    return PrepareResult(out, written, skipped, scan)


def prepared_filter(path: str | os.PathLike) -> str | None:
    """The resize filter ``stylenat prepare`` recorded in a zip's ``dataset.json`` (None: not recorded, or not
    a zip)."""
    path = Path(path)
    if path.suffix.lower() != ".zip" or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        if "dataset.json" not in archive.namelist():
            return None
        try:
            meta = json.loads(archive.read("dataset.json"))
        except json.JSONDecodeError:
            return None
    prepared = meta.get("prepare") if isinstance(meta, dict) else None
    return prepared.get("filter") if isinstance(prepared, dict) else None
