"""Finding clean-fid's Inception weights without assuming a network, and checking them before use.

clean-fid downloads its weights on first use and has no offline switch. The files it needs:

- ``inception-2015-12-05.pt`` (TorchScript, modes ``clean`` and ``legacy_tensorflow``); clean-fid
  keeps it in ``/tmp`` (``./`` on Windows), a place anyone can write to;
- ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's port, mode ``legacy_pytorch``); clean-fid
  fetches it through torch hub, into ``<torch hub dir>/checkpoints``.

:func:`find_inception_weights` looks, in order, at an explicit path, ``$STYLENAT_INCEPTION_WEIGHTS``,
our cache (``$STYLENAT_CACHE/inception``, default ``~/.cache/stylenat/inception``), clean-fid's cache
location (a good copy there is copied into ours, which is then the file loaded), and finally clean-fid's
download URL, only if its host answers, into our cache. A path given explicitly or through the variable
may be the file itself (under its published name) or a folder holding it; if it holds no such file the
lookup stops there with an error rather than silently using another copy. When nothing works,
:class:`InceptionWeightsNotFound` says which file is needed, where to get it and where to put it.

Every file is checked against its published SHA-256 before it is returned (TorchScript is code that
``torch.jit.load`` runs): the full digest of ``inception-2015-12-05.pt`` (the one pinned for the same
URL by crowsonkb/k-diffusion, ``k_diffusion/evaluation.py``, and others), and for pytorch-fid's file the
digest prefix its name carries (torch hub's convention; that file is read with ``weights_only=True``
anyway). A mismatch is :class:`InceptionWeightsMismatch`, one line naming the file; a bad copy in
clean-fid's shared location is skipped with a warning instead.

Network calls are bounded in total, DNS included: the reachability probe by its timeout, a download by
:data:`DOWNLOAD_TIMEOUT_S` (each runs in a daemon thread that is abandoned when its time is up).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from stylenat.files import atomic_path, atomic_write
from stylenat.optional import require

WEIGHTS_ENV = "STYLENAT_INCEPTION_WEIGHTS"


DOWNLOAD_TIMEOUT_S = 600.0  # a whole download, DNS and connection included


class InceptionWeightsNotFound(FileNotFoundError):
    """No Inception weights file was found and none could be downloaded; the message says what to do."""


class InceptionWeightsMismatch(ValueError):
    """A weights file whose SHA-256 is not the published one: refused before anything loads it."""


@dataclass(frozen=True)
class WeightsFile:
    """One published weights file: its name, the clean-fid module and attribute that hold the URL clean-fid
    downloads it from (read on first use, so this module imports without clean-fid), and its published
    SHA-256 (hex; a prefix where only that is published)."""

    name: str
    url_module: str
    url_attribute: str
    sha256: str

    @property
    def url(self) -> str:
        return getattr(require(self.url_module, "clean-fid", "clean-fid's Inception weights"), self.url_attribute)


TORCHSCRIPT = WeightsFile("inception-2015-12-05.pt", "cleanfid.downloads_helper", "inception_url",
                          "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4")
PYTORCH_FID = WeightsFile("pt_inception-2015-12-05-6726825d.pth", "cleanfid.inception_pytorch", "FID_WEIGHTS_URL",
                          "6726825d")
WEIGHTS_FOR_MODE = {"clean": TORCHSCRIPT, "legacy_tensorflow": TORCHSCRIPT, "legacy_pytorch": PYTORCH_FID}


def cleanfid_cache_path(file: WeightsFile) -> Path:
    """Where clean-fid itself keeps (and downloads) ``file``."""
    if file == TORCHSCRIPT:
        return Path("." if platform.system() == "Windows" else "/tmp") / file.name
    return Path(torch.hub.get_dir()) / "checkpoints" / file.name


def weights_cache_dir() -> Path:
    """Our own folder for the weights: ``$STYLENAT_CACHE/inception`` (default ``~/.cache/stylenat/inception``)."""
    from stylenat.metrics.reference import stats_cache_dir  # reference imports this module

    return stats_cache_dir().parent / "inception"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, file: WeightsFile) -> Path:
    """``path`` if its SHA-256 is ``file``'s published one, else :class:`InceptionWeightsMismatch`."""
    actual = sha256_of(path)
    if not actual.startswith(file.sha256):
        raise InceptionWeightsMismatch(
            f"{path}: SHA-256 {actual[:16]}... is not the published {file.sha256[:16]}... of {file.name}; "
            f"the file is corrupt or not the real one: delete it (or get it again from {file.url})")
    return path


def _within(seconds: float, what: str, fn: Callable, *args):
    """``fn(*args)`` in a daemon thread, abandoned (``TimeoutError``) after ``seconds``: no DNS lookup or stalled
    transfer holds the caller longer."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as err:  # handed to the caller below
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True, name=f"stylenat: {what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish within {seconds:g} s (offline or a very slow network?)")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def download(url: str, path: str | os.PathLike, file: WeightsFile | None = None,
             timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``path`` within ``timeout`` seconds in total, checked against ``file``'s published
    SHA-256 when given, published with an atomic rename (never a partial or unchecked file under ``path``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _within(timeout, f"downloading {url}", torch.hub.download_url_to_file, url, str(tmp))
        if file is not None:
            verify(tmp, file)
    return path


def weights_file(mode: str) -> WeightsFile:
    """The weights file clean-fid's Inception uses in ``mode``."""
    if mode not in WEIGHTS_FOR_MODE:
        raise ValueError(f"unknown clean-fid mode {mode!r}; expected one of {sorted(WEIGHTS_FOR_MODE)}")
    return WEIGHTS_FOR_MODE[mode]


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds, name lookup included."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)

    def connect() -> None:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass

    try:
        _within(timeout, f"connecting to {parts.hostname}", connect)  # bounds the DNS lookup too
        return True
    except OSError:  # TimeoutError included
        return False


def _in_given_path(path: str | os.PathLike, file: WeightsFile, source: str) -> Path:
    """``path`` is the file (under its published name) or a folder holding it; anything else is an error."""
    path = Path(path).expanduser()
    candidate = path / file.name if path.is_dir() else path
    if candidate.is_file() and candidate.name == file.name:
        return verify(candidate, file)
    if candidate.is_file():
        raise InceptionWeightsNotFound(
            f"{source} points to {candidate}, but clean-fid loads its weights by their published name: "
            f"rename the file to {file.name!r} (or point to the folder holding it).")
    raise InceptionWeightsNotFound(
        f"{source} is {path}, which holds no {file.name!r}. Put the file there "
        f"(download it from {file.url}) or fix the path.")


def find_inception_weights(mode: str = "clean", path: str | os.PathLike | None = None, *,
                           allow_download: bool = True) -> Path:
    """Path of the checked Inception weights file for ``mode``, downloading it only as the last resort.

    Order: ``path`` -> ``$STYLENAT_INCEPTION_WEIGHTS`` -> our cache -> clean-fid's cache location (copied
    into ours) -> clean-fid's URL (if ``allow_download`` and its host is reachable; into our cache).
    """
    file = weights_file(mode)
    if path is not None:
        return _in_given_path(path, file, "the weights path")
    if os.environ.get(WEIGHTS_ENV):
        return _in_given_path(os.environ[WEIGHTS_ENV], file, f"${WEIGHTS_ENV}")
    ours = weights_cache_dir() / file.name
    if ours.is_file():
        return verify(ours, file)
    theirs = cleanfid_cache_path(file)
    if theirs.is_file():
        try:
            verify(theirs, file)
        except InceptionWeightsMismatch as err:
            warnings.warn(f"ignoring clean-fid's copy: {err}", stacklevel=2)
        else:
            with atomic_write(ours) as dst, open(theirs, "rb") as src:
                shutil.copyfileobj(src, dst)
            return verify(ours, file)  # the copy we load, checked again: nobody else can change it
    if allow_download and network_reachable(file.url):
        return download(file.url, ours, file)
    why = "downloads are disabled" if not allow_download else f"{urlparse(file.url).hostname} is unreachable"
    raise InceptionWeightsNotFound(
        f"Inception weights for clean-fid mode {mode!r} not found: the file {file.name!r} is needed "
        f"({why}). Get it from {file.url} and either\n"
        f"  - pass its path (the file or its folder) as the weights path, or\n"
        f"  - set {WEIGHTS_ENV}=<the file or its folder>, or\n"
        f"  - copy it to our cache: {ours}")
