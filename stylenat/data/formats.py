"""The three on-disk formats: a folder of images, a StyleGAN dataset-tool zip, and an LSUN LMDB.

Each lists its items at construction (clear errors for a missing path, no images, or a foreign layout)
and reads one item on demand. The datasets can be sent to DataLoader workers: a zip handle is reopened
in each process, an LMDB environment shared per process (see ``open_lmdb``).
"""

from __future__ import annotations

import json
import os
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from PIL import Image

from stylenat.data.base import DECODE_ERRORS, ImageDataset
from stylenat.data.transforms import IMAGE_EXTENSIONS, decode_image
from stylenat.optional import require

if TYPE_CHECKING:
    import lmdb


def require_path(path: str | os.PathLike, what: str) -> Path:
    """``Path(path)``, or ``FileNotFoundError`` naming the path and what was expected there."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return path


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class FolderScan:
    """What :func:`scan_image_folder` found: image files (relative paths, sorted), entries named like images
    that are not regular files (FIFOs, sockets, devices, broken links), and folders reached again through a
    symbolic link (each real folder is read once)."""

    files: list[Path] = field(default_factory=list)
    not_regular: list[str] = field(default_factory=list)
    revisited: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line on what the scan left out ("" when nothing), e.g. for ``stylenat prepare``'s report."""
        parts = []
        if self.not_regular:
            parts.append(f"skipped {len(self.not_regular)} entries named like images that are not regular files "
                         f"(e.g. {self.not_regular[0]})")
        if self.revisited:
            parts.append(f"followed symbolic links but did not re-enter {len(self.revisited)} folders already read "
                         f"(e.g. {self.revisited[0]}: a link loop or a second link to the same folder)")
        return "; ".join(parts)


def _file_kind(mode: int) -> str:
    return next((name for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"),
                                         (stat.S_ISBLK, "device"), (stat.S_ISDIR, "folder")) if test(mode)), "special file")


def scan_image_folder(root: Path) -> FolderScan:
    """Image files under ``root``, following symbolic links to folders without ever entering the same real
    folder twice (tracked by ``(st_dev, st_ino)``), so link loops neither duplicate images nor blow up the
    walk; only regular files are listed, so a FIFO named ``x.png`` is reported, never opened (it would block)."""
    scan, seen = FolderScan(), set()
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in seen:
            dirnames[:] = []  # do not descend: this folder's content is listed already
            scan.revisited.append(dirpath)
            continue
        seen.add((info.st_dev, info.st_ino))
        for name in names:
            if not is_image_name(name):
                continue
            path = Path(dirpath, name)
            try:
                mode = path.stat().st_mode  # follows a link to its target
            except OSError:
                scan.not_regular.append(f"{path} (broken link)")
                continue
            if stat.S_ISREG(mode):
                scan.files.append(path.relative_to(root))
            else:
                scan.not_regular.append(f"{path} ({_file_kind(mode)})")
    scan.files.sort()
    return scan


class ImageFolderDataset(ImageDataset):
    """Every png/jpg/jpeg/webp/bmp regular file under ``path``, recursively, in sorted order
    (:func:`scan_image_folder`: symbolic links followed, each real folder read once, non-regular files
    skipped; ``self.scan`` says what was left out, and a ``UserWarning`` too).

    With ``class_folders=True`` the first-level sub-folders are the classes (sorted names -> labels
    ``0..K-1``, like torchvision's ``ImageFolder``) and images directly under ``path`` are an error.
    Other options: see :class:`ImageDataset`.
    """

    def __init__(self, path: str | os.PathLike, resolution: int, *, class_folders: bool = False, **options: Any):
        super().__init__(str(path), resolution, **options)
        root = require_path(path, "image folder")
        if not root.is_dir():
            raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
        self.scan = scan_image_folder(root)
        files = self.scan.files
        if self.scan.summary():
            warnings.warn(f"image folder {str(root)!r}: {self.scan.summary()}", stacklevel=2)
        if not files:
            raise ValueError(f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.root = root
        if not class_folders:
            self._set_items(files)
            return
        loose = [str(f) for f in files if len(f.parts) == 1]
        if loose:
            raise ValueError(f"class_folders=True but {str(root)!r} has images outside class sub-folders, "
                             f"e.g. {loose[:3]}")
        classes = sorted({f.parts[0] for f in files})
        index = {name: i for i, name in enumerate(classes)}
        self._set_items(files, [index[f.parts[0]] for f in files], classes)

    def _read(self, item: Path) -> Image.Image:
        return decode_image(self.root / item)

    def _where(self, item: Path) -> str:
        return str(self.root / item)


class ZipDataset(ImageDataset):
    """Images in a zip, as StyleGAN's ``dataset_tool.py`` writes them (``00000/img00000000.png`` ...).

    An optional ``dataset.json`` at the archive root gives integer class labels,
    ``{"labels": [["00000/img00000000.png", 3], ...]}`` (or ``"labels": null``); its other keys are kept
    in ``self.info`` (``stylenat prepare`` records the resolution and resize filter there).
    Other options: see :class:`ImageDataset`.
    """

    def __init__(self, path: str | os.PathLike, resolution: int, **options: Any):
        super().__init__(str(path), resolution, **options)
        self.path = require_path(path, "zip dataset")
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = sorted(n for n in archive.namelist() if is_image_name(n) and not n.startswith("__MACOSX/"))
                meta = json.loads(archive.read("dataset.json")) if "dataset.json" in archive.namelist() else {}
        except zipfile.BadZipFile as error:
            raise ValueError(f"zip dataset {str(self.path)!r} is not a readable zip file: {error}") from error
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path}: dataset.json is not valid JSON: {error}") from error
        if not names:
            raise ValueError(f"zip dataset {str(self.path)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.info = {k: v for k, v in meta.items() if k != "labels"}
        self._set_items(names, self._parse_labels(meta.get("labels"), names))
        self._archive: zipfile.ZipFile | None = None
        self._archive_pid = -1

    def _parse_labels(self, labels: Any, names: list[str]) -> list[int] | None:
        if labels is None:
            return None
        try:
            by_name = dict(labels)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{self.path}: dataset.json 'labels' must be null or a list of "
                             f"[file name, class] pairs ({error})") from error
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"{self.path}: dataset.json has no label for {len(missing)} images, e.g. {missing[:3]}")
        wrong = [n for n in names if not isinstance(by_name[n], int) or isinstance(by_name[n], bool)]
        if wrong:
            raise ValueError(f"{self.path}: only integer class labels are supported; "
                             f"{wrong[0]!r} has {by_name[wrong[0]]!r}")
        if min(by_name[n] for n in names) < 0:
            raise ValueError(f"{self.path}: class labels must be >= 0")
        return [by_name[n] for n in names]

    def _open(self) -> zipfile.ZipFile:
        if self._archive is None or self._archive_pid != os.getpid():  # never share a handle across fork
            self._archive, self._archive_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._archive

    def _read(self, item: str) -> Image.Image:
        return decode_image(self._open().read(item))

    def _where(self, item: str) -> str:
        return f"{self.path}:{item}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archive": None, "_archive_pid": -1}


# One read-only environment per LMDB file per process: py-lmdb refuses to open the same files twice in a
# process, and a forked DataLoader worker inherits the parent's entry (a read-only, lock-free environment
# is safe to read from a forked child; the worker could not open its own anyway).
_LMDB_ENVIRONMENTS: dict[tuple[int, int], lmdb.Environment] = {}


def _lmdb() -> ModuleType:
    return require("lmdb", "lmdb", "reading an LSUN LMDB dataset")


def open_lmdb(folder: Path) -> lmdb.Environment:
    """The shared read-only environment of the LMDB in ``folder`` (keyed by its data file's identity)."""
    lmdb = _lmdb()
    stat = (folder / "data.mdb").stat()
    key = (stat.st_dev, stat.st_ino)
    if key not in _LMDB_ENVIRONMENTS:
        _LMDB_ENVIRONMENTS[key] = lmdb.open(str(folder), readonly=True, lock=False, readahead=False, meminit=False)
    return _LMDB_ENVIRONMENTS[key]


class LSUNDataset(ImageDataset):
    """An LSUN LMDB (``<category>_<split>_lmdb/`` holding ``data.mdb``): keys are image ids, values encoded
    images (webp or jpeg). ``path`` is that folder or its ``data.mdb``. Keys are listed once, in LMDB order.

    An LMDB whose first value is not an encoded image is not LSUN's layout: ``ValueError``.
    Other options: see :class:`ImageDataset`.
    """

    def __init__(self, path: str | os.PathLike, resolution: int, **options: Any):
        super().__init__(str(path), resolution, **options)
        path = require_path(path, "LMDB dataset")
        if path.is_file() and path.name != "data.mdb":
            raise ValueError(f"{str(path)!r} is not an LMDB's data.mdb: give the LMDB folder or its data.mdb")
        self.path = path.parent if path.is_file() else path
        if not (self.path / "data.mdb").is_file():
            raise ValueError(f"LMDB dataset {str(path)!r} is a folder without data.mdb")
        lmdb = _lmdb()
        try:
            with open_lmdb(self.path).begin() as txn:
                keys = list(txn.cursor().iternext(keys=True, values=False))
                first = txn.get(keys[0]) if keys else None
        except lmdb.Error as error:
            raise ValueError(f"LMDB dataset {str(path)!r} cannot be read as an LMDB: {error}") from error
        if not keys:
            raise ValueError(f"LMDB dataset {str(self.path)!r} is empty")
        try:
            decode_image(first)
        except DECODE_ERRORS as error:
            raise ValueError(f"LMDB {str(self.path)!r} is not in LSUN's layout: the value of key {keys[0][:40]!r} "
                             f"is not an encoded image ({type(error).__name__}: {error})") from error
        self._set_items(keys)

    def _read(self, item: bytes) -> Image.Image:
        with open_lmdb(self.path).begin() as txn:
            value = txn.get(item)
        if value is None:
            raise FileNotFoundError(f"key {item!r} vanished from the LMDB")
        return decode_image(value)

    def _where(self, item: bytes) -> str:
        return f"{self.path}[{item.decode(errors='replace')}]"
