"""Dataset folders a careless user (or a hostile one) hands us: symbolic-link loops give each image once and
finish at once, a FIFO named like an image is reported and never opened (opening one blocks forever), and a
wrong ``.mdb`` path is named as given."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from stylenat.data import open_dataset, prepare
from stylenat.data.formats import ImageFolderDataset, scan_image_folder
from stylenat.metrics import ImageFiles

pytestmark = pytest.mark.timeout(60)  # a regression would hang (a FIFO read, an endless walk), not fail


def images(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = []
    for i in range(count):
        paths.append(folder / f"{prefix}{i}.png")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture
def single_loop(tmp_path):
    """root/{a0..a2}.png, root/sub/{b0,b1}.png and root/sub/back -> root: a loop through the root."""
    root = tmp_path / "data"
    images(root, 3, "a")
    images(root / "sub", 2, "b")
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    return root


@pytest.fixture
def double_loop(single_loop):
    """Two more links into the tree: the walk without tracking grows exponentially with depth."""
    (single_loop / "again").symlink_to(single_loop, target_is_directory=True)
    (single_loop / "sub" / "self").symlink_to(single_loop / "sub", target_is_directory=True)
    return single_loop


@pytest.mark.parametrize("tree", ["single_loop", "double_loop"])
def test_symlink_loops_give_each_image_once(tree, request):
    root = request.getfixturevalue(tree)
    scan = scan_image_folder(root)
    assert [p.name for p in scan.files] == ["a0.png", "a1.png", "a2.png", "b0.png", "b1.png"]
    assert scan.revisited and "did not re-enter" in scan.summary()
    with pytest.warns(UserWarning, match="did not re-enter"):
        assert len(ImageFolderDataset(root, 8)) == 5


def test_a_link_to_a_folder_outside_is_followed(tmp_path):
    images(tmp_path / "elsewhere", 2)
    root = tmp_path / "data"
    images(root, 1, "own")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    scan = scan_image_folder(root)
    assert [str(p) for p in scan.files] == ["linked/img0.png", "linked/img1.png", "own0.png"]
    assert scan.summary() == ""


def test_prepare_reports_the_loop_in_its_summary(double_loop, tmp_path, capsys):
    from stylenat.cli import main

    out = tmp_path / "out.zip"
    with pytest.warns(UserWarning):
        assert main(["prepare", str(double_loop), str(out), "--resolution", "8"]) == 0
    said = capsys.readouterr().out
    assert "wrote 5 images" in said and "did not re-enter" in said
    with zipfile.ZipFile(out) as archive:
        assert "did not re-enter" in json.loads(archive.read("dataset.json"))["prepare"]["scan"]


@pytest.fixture
def with_fifo(tmp_path):
    root = tmp_path / "data"
    images(root, 2)
    os.mkfifo(root / "stuck.png")  # reading it would wait for a writer forever
    return root


def test_a_fifo_is_skipped_and_reported_never_opened(with_fifo, tmp_path):
    scan = scan_image_folder(with_fifo)
    assert [p.name for p in scan.files] == ["img0.png", "img1.png"]
    assert scan.not_regular == [f"{with_fifo / 'stuck.png'} (FIFO)"]
    with pytest.warns(UserWarning, match="not regular files"):
        result = prepare(with_fifo, tmp_path / "out.zip", 8, progress=False)
    assert result.num_images == 2 and "stuck.png (FIFO)" in result.scan


def test_a_broken_link_is_reported_too(tmp_path):
    root = tmp_path / "data"
    images(root, 1)
    (root / "gone.png").symlink_to(tmp_path / "missing.png")
    assert scan_image_folder(root).not_regular == [f"{root / 'gone.png'} (broken link)"]


def test_metric_image_files_skip_a_fifo(with_fifo):
    assert ImageFiles(with_fifo).names == ["img0.png", "img1.png"]


def test_a_wrong_mdb_file_is_named_as_given(tmp_path):
    folder = tmp_path / "church_lmdb"
    env = lmdb.open(str(folder), map_size=1 << 20)
    env.close()
    other = folder / "lock.mdb"
    assert other.is_file()
    with pytest.raises(ValueError, match=f"'{other}' is not an LMDB's data.mdb"):
        open_dataset(other, 8)
    stray = tmp_path / "stray.mdb"
    stray.write_bytes(b"not an lmdb")
    with pytest.raises(ValueError, match=f"'{stray}' is not an LMDB's data.mdb"):
        open_dataset(stray, 8)
    bad = tmp_path / "bad_lmdb"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"not an lmdb either")
    with pytest.raises(ValueError, match=f"'{bad / 'data.mdb'}' cannot be read as an LMDB"):
        open_dataset(bad / "data.mdb", 8)
