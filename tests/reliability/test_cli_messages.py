"""The first hour without surprises: what ``stylenat fid`` and ``prepare`` say about odd input, and what a
fresh clone leaves out of git."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylenat import metrics
from stylenat.cli import main
from stylenat.metrics import CleanFIDExtractor

sys.path.insert(0, str(Path(__file__).parents[1] / "metrics"))
from metrics_helpers import TinyNet, random_images, write_pngs  # noqa: E402  (the metrics tests' tiny network)

ROOT = Path(__file__).resolve().parents[2]
TINY = f"{__name__}:tiny_extractor"


def tiny_extractor(mode, device):
    """The ``--extractor`` factory these tests pass."""
    return CleanFIDExtractor(TinyNet(), name="tiny", feature_dim=8, mode=mode, device=device)


@pytest.fixture(autouse=True)
def offline(offline_metrics):
    """See ``offline_metrics`` in tests/conftest.py."""


@pytest.fixture(scope="module")
def real_images(tmp_path_factory) -> Path:
    return write_pngs(tmp_path_factory.mktemp("real"), random_images(16, seed=0, res=32))


def samples_with_a_grid(folder: Path) -> Path:
    """What ``stylenat generate --grid`` leaves: seedNNNN.png samples, a bigger grid.png and interpolation frames."""
    write_pngs(folder, random_images(6, seed=1, res=32))
    Image.new("RGB", (96, 64)).save(folder / "grid.png")
    (folder / "interpolation").mkdir()
    Image.new("RGB", (32, 32)).save(folder / "interpolation" / "frame0000.png")
    return folder


def test_fid_on_generate_output_leaves_out_the_grid_and_warns_about_few_images(real_images, tmp_path, capsys):
    fakes = samples_with_a_grid(tmp_path / "out")
    assert main(["fid", "--images", str(fakes), "--ref-data", str(real_images), "--extractor", TINY,
                 "--run-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "left out 2 files of stylenat generate that are not samples (grid.png, interpolation/)" in captured.err
    assert "warning: measured on 6 images: below 2,048 the Fréchet and kernel distances are strongly biased" \
        in captured.err
    record, = (json.loads(line) for line in (tmp_path / "metric-fd_tiny6.jsonl").read_text().splitlines())
    assert record["num_samples"] == 6


def test_fid_names_an_odd_sized_image_before_computing_statistics(real_images, tmp_path, capsys, monkeypatch):
    fakes = write_pngs(tmp_path / "fakes", random_images(4, seed=2, res=32))
    Image.new("RGB", (40, 40)).save(fakes / "notes.png")
    monkeypatch.setattr(metrics, "build_extractor", lambda *a, **k: pytest.fail("statistics were started"))
    assert main(["fid", "--images", str(fakes), "--ref-data", str(real_images), "--extractor", TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{fakes / 'notes.png'} is 40x40 but" in err and "is 32x32" in err


def test_prepare_says_pass_force_and_suggests_center_crop(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (20, 16)).save(src / "wide.png")
    out = tmp_path / "out.zip"
    out.write_bytes(b"old")
    assert main(["prepare", str(src), str(out), "--resolution", "8"]) == 2
    assert capsys.readouterr().err.strip().endswith("already exists; pass --force to overwrite it")
    assert main(["prepare", str(src), str(out), "--resolution", "8", "--force", "--no-center-crop",
                 "--on-error", "raise"]) == 2
    err = capsys.readouterr().err
    assert "wide.png: image is 20x16, not square" in err and "--center-crop" in err and "convert the dataset" not in err


def test_prepare_composites_transparency_on_the_stated_background(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere ...
    rgba[:4, :, 3] = 255  # ... opaque in the top half, fully transparent below
    Image.fromarray(rgba, "RGBA").save(src / "sprite.png")
    out = tmp_path / "out.zip"
    assert main(["prepare", str(src), str(out), "--resolution", "8", "--filter", "box"]) == 0
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "Images with transparency are composited on white" in capsys.readouterr().out
    with zipfile.ZipFile(out) as archive:
        with archive.open("00000/img00000000.png") as f:
            pixels = np.array(Image.open(f))
        meta = json.loads(archive.read("dataset.json"))
    assert pixels[0, 0].tolist() == [200, 0, 0] and pixels[7, 7].tolist() == [255, 255, 255]
    assert meta["prepare"]["alpha_background"] == "white"


def test_gitignore_covers_the_default_output_folders():
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "runs/demo/x.png", "out/seed0000.png",
                              "attention/r16_block0_groups.png", "lightning_logs/version_0/x"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["runs/demo/x.png", "out/seed0000.png", "attention/r16_block0_groups.png",
                                      "lightning_logs/version_0/x"]
