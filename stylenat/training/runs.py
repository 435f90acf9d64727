"""Run directories that never clobber each other: a lock, a refusal to start over an earlier run, checks
of the checkpoint a run resumes from, and the clean-up of temporary files that killed writes left.

``stylenat fit`` (:mod:`stylenat.commands.lightning`) calls these before training:

- :class:`RunLock`: ``<run dir>/stylenat.lock`` holds the owner's pid, host and start time and an exclusive
  ``flock`` for as long as the run lives. The kernel drops the ``flock`` when the process dies however
  it dies, so a lock file without a live ``flock`` is stale and is taken over.
- :func:`earlier_run_outputs`: what marks a directory as holding a run (its ``config.yaml``, checkpoints,
  generator exports, metric records).
- :func:`remove_stale_temporaries`: the ``.<name>.*.tmp`` files that atomic writers killed mid-write leave.
- :func:`read_checkpoint`: a checkpoint's contents without running code from it (weights only, tensors
  memory-mapped, not read), or one line saying why it cannot be read.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

LOCK_NAME = "stylenat.lock"
RUN_OUTPUTS = ("config.yaml", "generator.safetensors", "network-snapshot-*.safetensors", "metric-*.jsonl",
               "checkpoints/*.ckpt")
"""Glob patterns (relative to the run directory) of the files that show a directory holds a run."""


class RunError(Exception):
    """A run cannot start or resume here; the message says why in one line, naming the path."""


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release` (or process death).

    The lock file ``<run_dir>/stylenat.lock`` holds ``{"pid", "host", "started"}`` of the owner, for the
    message another run gets. Usable as a context manager.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock. Returns the owner record of a stale lock that was taken over (else None); raises
        :class:`RunError` naming the live owner when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since {owner.get('started', '?')}"
                raise RunError(f"{self.path.parent} is in use by another stylenat run ({who}); wait for it to end "
                               "or choose another run directory") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the owner released (unlinked) it between our open and flock
                same_file = False
            if same_file:
                break
            os.close(fd)
        stale = _read_owner(fd) or None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return stale

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def earlier_run_outputs(run_dir: str | os.PathLike) -> list[str]:
    """Names (relative to ``run_dir``) of the files that show it holds a run, sorted; empty if none."""
    root = Path(run_dir)
    return sorted(str(p.relative_to(root)) for pattern in RUN_OUTPUTS for p in root.glob(pattern))


def remove_stale_temporaries(*folders: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files of interrupted atomic writes in ``folders``; returns them.

    Call only while holding the run's :class:`RunLock`: a live writer's temporary file looks the same.
    """
    removed = []
    for folder in folders:
        for path in sorted(Path(folder).glob(".*.tmp")):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint's contents, loaded as data (:func:`stylenat.models.safe_load.load_torch_file`: no
    code from the file runs) with its tensors memory-mapped (not read). Raises :class:`RunError` with one line
    naming the path and the reason: missing, empty, truncated, not a checkpoint, or holding code."""
    from stylenat.models.safe_load import UnsafeCheckpointError, load_torch_file

    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise RunError(f"checkpoint {path} is empty (0 bytes): a write was interrupted; resume from another "
                       "checkpoint or start without --ckpt_path")
    try:
        checkpoint = load_torch_file(path, "cpu", mmap=True)
    except UnsafeCheckpointError as err:
        raise RunError(f"checkpoint {err}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunError(f"checkpoint {path} ({size} bytes) is truncated or not a checkpoint: {reason}") from err
    if not isinstance(checkpoint, dict):
        raise RunError(f"checkpoint {path} is not a training checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint
