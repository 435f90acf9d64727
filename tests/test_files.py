"""Atomic writes (stylenat/files.py): the target holds the old file or the new one, never part of one."""

from __future__ import annotations

import errno
import os

import pytest

from stylenat.files import atomic_path, atomic_write


def test_atomic_write_publishes_with_umask_permissions_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "new" / "file.bin"
    old = os.umask(0o027)
    try:
        with atomic_write(target) as f:
            f.write(b"payload")
            assert not target.exists()  # nothing under the name until the block ends
    finally:
        os.umask(old)
    assert target.read_bytes() == b"payload"
    assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(target.parent) == ["file.bin"]


def test_a_failed_write_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("mid-write")
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_a_full_disk_names_the_target(tmp_path):
    target = tmp_path / "weights.safetensors"
    with pytest.raises(OSError) as caught:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert os.listdir(tmp_path) == []


def test_atomic_write_refuses_a_read_mode(tmp_path):
    with pytest.raises(ValueError, match="write mode"):
        with atomic_write(tmp_path / "x", "rb"):
            pass
