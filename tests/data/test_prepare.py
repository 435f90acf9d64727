"""``prepare``: StyleGAN-layout zips from every source, labels, bad files, overwrite rules, CLI, progress."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from data_helpers import noise_image, truncated_png

from stylenat.cli import main
from stylenat.data import UnreadableImageError, ZipDataset, open_dataset, prepare


def dataset_json(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("dataset.json"))


def test_folder_round_trip(image_folder, tmp_path):
    out = tmp_path / "out" / "images16.zip"
    result = prepare(image_folder, out, 16, filter="box", progress=False)
    assert result.path == out and result.num_images == 6 and result.skipped == []
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == [f"00000/img{i:08d}.png" for i in range(6)] + ["dataset.json"]
    meta = dataset_json(out)
    assert meta["labels"] is None
    assert meta["prepare"] == {"source": str(image_folder), "resolution": 16, "filter": "box",
                               "center_crop": True, "alpha_background": "white", "skipped": []}
    source, copy = open_dataset(image_folder, 16, filter="box"), ZipDataset(out, 16)
    assert copy.info["prepare"]["filter"] == "box"
    for i in range(6):  # PNG is lossless: the zip holds exactly what the source dataset produced
        torch.testing.assert_close(copy[i], source[i], rtol=0, atol=0)
    assert [p.name for p in out.parent.iterdir()] == ["images16.zip"]  # no temporary file left


def test_labels_travel_from_class_folders_digits_and_zips(class_folder, stylegan_zip, tmp_path):
    prepare(class_folder, tmp_path / "classes.zip", 16, class_folders=True, progress=False)
    labelled = ZipDataset(tmp_path / "classes.zip", 16, use_labels=True)
    assert labelled.labels == open_dataset(class_folder, 16, use_labels=True).labels

    prepare(stylegan_zip, tmp_path / "again.zip", 16, progress=False)
    assert ZipDataset(tmp_path / "again.zip", 16).labels == [0, 1, 2, 0, 1]

    prepare("digits", tmp_path / "digits.zip", 32, progress=False)
    digits = ZipDataset(tmp_path / "digits.zip", 32, use_labels=True)
    reference = open_dataset("digits", 32, use_labels=True)
    assert digits.num_images == 1797 and digits.labels == reference.labels
    torch.testing.assert_close(digits[100][0], reference[100][0], rtol=0, atol=0)


def test_lmdb_source(lsun_lmdb, tmp_path):
    result = prepare(lsun_lmdb, tmp_path / "church.zip", 8, progress=False)
    assert result.num_images == 4 and ZipDataset(tmp_path / "church.zip", 8)[3].shape == (3, 8, 8)


def test_unreadable_images_are_left_out_and_recorded(image_folder, tmp_path):
    (image_folder / "a" / "broken.png").write_bytes(truncated_png())
    result = prepare(image_folder, tmp_path / "out.zip", 16, progress=False)
    assert result.num_images == 6 and len(result.skipped) == 1 and result.skipped[0].endswith("a/broken.png")
    assert dataset_json(tmp_path / "out.zip")["prepare"]["skipped"] == result.skipped
    assert ZipDataset(tmp_path / "out.zip", 16).num_images == 6

    with pytest.raises(UnreadableImageError, match=r"a/broken\.png"):
        prepare(image_folder, tmp_path / "strict.zip", 16, on_error="raise", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".zip", ".tmp")) == ["out.zip"]


def test_refuses_to_overwrite_without_force(stylegan_zip, tmp_path):
    out = tmp_path / "out.zip"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"out\.zip' already exists; pass --force"):
        prepare(stylegan_zip, out, 16, progress=False)
    assert out.read_bytes() == b"precious"
    prepare(stylegan_zip, out, 8, force=True, progress=False)
    assert ZipDataset(out, 8).num_images == 5


def test_bad_output_name_and_missing_source(stylegan_zip, tmp_path):
    with pytest.raises(ValueError, match=r"out\.tar' must end in \.zip"):
        prepare(stylegan_zip, tmp_path / "out.tar", 16)
    with pytest.raises(FileNotFoundError, match="nowhere' does not exist"):
        prepare(tmp_path / "nowhere", tmp_path / "out.zip", 16)


def test_cli_shows_progress_and_a_summary(image_folder, tmp_path, capsys):
    out = tmp_path / "cli.zip"
    assert main(["prepare", str(image_folder), str(out), "--resolution", "16", "--filter", "box"]) == 0
    captured = capsys.readouterr()
    assert "prepare" in captured.err and "6/6" in captured.err  # the tqdm bar
    assert f"wrote 6 images (16x16, centre-cropped, box) to {out}; skipped 0 unreadable" in captured.out
    assert dataset_json(out)["prepare"]["center_crop"] is True

    assert main(["prepare", str(image_folder), str(out), "--resolution", "16"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err


def test_cli_force_and_no_center_crop(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    for i in range(3):
        noise_image(i, (16, 16)).save(tmp_path / "src" / f"{i}.png")
    out = tmp_path / "cli.zip"
    out.write_bytes(b"old")
    assert main(["prepare", str(tmp_path / "src"), str(out), "--resolution", "8", "--no-center-crop", "--force"]) == 0
    assert dataset_json(out)["prepare"]["center_crop"] is False and ZipDataset(out, 8).num_images == 3
    noise_image(9, (20, 16)).save(tmp_path / "src" / "wide.png")
    assert main(["prepare", str(tmp_path / "src"), str(out), "--resolution", "8", "--no-center-crop", "--force"]) == 2
    assert "wide.png: image is 20x16, not square" in capsys.readouterr().err
    assert ZipDataset(out, 8).num_images == 3  # the failed run left the previous zip in place
