"""Atomic file writes: every file StyleNAT publishes (checkpoints, exports, prepared zips, statistics, weights)
goes through :func:`atomic_path` or :func:`atomic_write`, so a crash or a full disk at any point leaves either
the previous file or the new one under the target's name, never a truncated one.

The recipe: a temporary file ``.<name>.<random>.tmp`` in the target's folder (a rename within one file system
is atomic; :func:`stylenat.training.runs.remove_stale_temporaries` finds what killed writers leave), flushed
to disk with ``fsync``, given the permissions a plain ``open`` would (``0o666`` less the umask), renamed over
the target with ``os.replace``, and the folder fsynced so the rename survives a power cut. On any exception
the temporary file is removed; an ``OSError`` that names no file (a full disk) is re-raised naming the
target, so the one-line error says which file did not fit.

This module imports only the standard library: every layer (models, data, metrics, training) may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write"]


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (an empty file) for the caller to write; on a clean exit it is
    fsynced, given umask permissions and renamed over ``path`` (folders created as needed).

    For writers that take a file name (``safetensors.torch.save_file``, ``torch.hub.download_url_to_file``);
    writers that take a file object use :func:`atomic_write`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err  # a full disk: say which file did not fit
        raise
    _fsync(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)``, atomically: yields a file object on a temporary file beside ``path`` that
    replaces ``path`` once the ``with`` block ends without an exception (see :func:`atomic_path`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write mode must be a write mode ('w', 'wb', ...), got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
