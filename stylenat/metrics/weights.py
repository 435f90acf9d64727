"""Finding clean-fid's Inception weights without assuming a network.

clean-fid downloads its weights on first use and has no offline switch. The files it needs:

- ``inception-2015-12-05.pt`` (TorchScript, modes ``clean`` and ``legacy_tensorflow``); clean-fid
  keeps it in ``/tmp`` (``./`` on Windows);
- ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's port, mode ``legacy_pytorch``); clean-fid
  fetches it through torch hub, into ``<torch hub dir>/checkpoints``.

:func:`find_inception_weights` looks, in order, at an explicit path, ``$STYLENAT_INCEPTION_WEIGHTS``,
clean-fid's cache location, and finally clean-fid's download URL, only if its host answers. A path
given explicitly or through the variable may be the file itself (under its published name) or a
folder holding it; if it holds no such file the lookup stops there with an error rather than
silently using another copy. When nothing works, :class:`InceptionWeightsNotFound` says which file
is needed, where to get it and where to put it.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from stylenat.optional import require

WEIGHTS_ENV = "STYLENAT_INCEPTION_WEIGHTS"


class InceptionWeightsNotFound(FileNotFoundError):
    """No Inception weights file was found and none could be downloaded; the message says what to do."""


@dataclass(frozen=True)
class WeightsFile:
    """One published weights file: its name, and the clean-fid module and attribute that hold the URL clean-fid
    downloads it from (read on first use, so this module imports without clean-fid)."""

    name: str
    url_module: str
    url_attribute: str

    @property
    def url(self) -> str:
        return getattr(require(self.url_module, "clean-fid", "clean-fid's Inception weights"), self.url_attribute)


TORCHSCRIPT = WeightsFile("inception-2015-12-05.pt", "cleanfid.downloads_helper", "inception_url")
PYTORCH_FID = WeightsFile("pt_inception-2015-12-05-6726825d.pth", "cleanfid.inception_pytorch", "FID_WEIGHTS_URL")
WEIGHTS_FOR_MODE = {"clean": TORCHSCRIPT, "legacy_tensorflow": TORCHSCRIPT, "legacy_pytorch": PYTORCH_FID}


def cleanfid_cache_path(file: WeightsFile) -> Path:
    """Where clean-fid itself keeps (and downloads) ``file``."""
    if file == TORCHSCRIPT:
        return Path("." if platform.system() == "Windows" else "/tmp") / file.name
    return Path(torch.hub.get_dir()) / "checkpoints" / file.name


def weights_file(mode: str) -> WeightsFile:
    """The weights file clean-fid's Inception uses in ``mode``."""
    if mode not in WEIGHTS_FOR_MODE:
        raise ValueError(f"unknown clean-fid mode {mode!r}; expected one of {sorted(WEIGHTS_FOR_MODE)}")
    return WEIGHTS_FOR_MODE[mode]


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _in_given_path(path: str | os.PathLike, file: WeightsFile, source: str) -> Path:
    """``path`` is the file (under its published name) or a folder holding it; anything else is an error."""
    path = Path(path).expanduser()
    candidate = path / file.name if path.is_dir() else path
    if candidate.is_file() and candidate.name == file.name:
        return candidate
    if candidate.is_file():
        raise InceptionWeightsNotFound(
            f"{source} points to {candidate}, but clean-fid loads its weights by their published name: "
            f"rename the file to {file.name!r} (or point to the folder holding it).")
    raise InceptionWeightsNotFound(
        f"{source} is {path}, which holds no {file.name!r}. Put the file there "
        f"(download it from {file.url}) or fix the path.")


def find_inception_weights(mode: str = "clean", path: str | os.PathLike | None = None, *,
                           allow_download: bool = True) -> Path:
    """Path of the Inception weights file for ``mode``, downloading it only as the last resort.

    Order: ``path`` -> ``$STYLENAT_INCEPTION_WEIGHTS`` -> clean-fid's cache location -> clean-fid's
    URL (if ``allow_download`` and its host is reachable; saved atomically to clean-fid's cache).
    """
    file = weights_file(mode)
    if path is not None:
        return _in_given_path(path, file, "the weights path")
    if os.environ.get(WEIGHTS_ENV):
        return _in_given_path(os.environ[WEIGHTS_ENV], file, f"${WEIGHTS_ENV}")
    cached = cleanfid_cache_path(file)
    if cached.is_file():
        return cached
    if allow_download and network_reachable(file.url):
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(file.url, str(cached))  # writes a temp file, then renames
        return cached
    why = "downloads are disabled" if not allow_download else f"{urlparse(file.url).hostname} is unreachable"
    raise InceptionWeightsNotFound(
        f"Inception weights for clean-fid mode {mode!r} not found: the file {file.name!r} is needed "
        f"({why}). Get it from {file.url} and either\n"
        f"  - pass its path (the file or its folder) as the weights path, or\n"
        f"  - set {WEIGHTS_ENV}=<the file or its folder>, or\n"
        f"  - copy it to clean-fid's cache: {cached}")
