"""``stylenat generate / fid / attention-map`` end to end on a tiny saved demo generator, offline.

fid runs with a tiny injected extractor (the metrics tests' ``TinyNet``, via the ``--extractor``
factory path ``test_evaluate_cli:tiny_extractor``) against statistics of an image folder.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from natten_ops import window_indices
from stylenat.cli import main
from stylenat.metrics import CleanFIDExtractor, weights, z_from_seeds
from stylenat.checkpoints import load_generator
from stylenat.models.checkpoint import save_generator
from stylenat.models.generator import create_generator

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from metrics_helpers import TinyNet, random_images, write_pngs  # noqa: E402  (the metrics tests' tiny network)

TINY = f"{__name__}:tiny_extractor"


def tiny_extractor(mode, device):
    """The ``--extractor`` factory the fid tests pass."""
    return CleanFIDExtractor(TinyNet(), name="tiny", feature_dim=8, mode=mode, device=device)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No network, no download, no user cache, no Inception file from this machine's clean-fid cache."""
    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download a file")

    monkeypatch.setattr(weights, "network_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(weights, "cleanfid_cache_path", lambda file: tmp_path_factory.mktemp("cleanfid") / file.name)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path_factory.mktemp("stylenat-cache")))
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "demo.safetensors"
    return str(save_generator(create_generator("demo"), path, "demo", {}))


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    """24 random 32x32 PNGs: the reference dataset of the fid tests."""
    return str(write_pngs(tmp_path_factory.mktemp("real"), random_images(24, seed=0, res=32)))


def run(*argv):
    return main([str(a) for a in argv])


def pixels(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_names_and_determinism(ckpt, tmp_path):
    assert run("generate", "--ckpt", ckpt, "--seeds", "0-2,42", "--outdir", tmp_path / "a", "--device", "cpu") == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0042.png"]
    assert pixels(tmp_path / "a" / "seed0000.png").shape == (32, 32, 3)

    assert run("generate", "--ckpt", ckpt, "--seeds", "42,0-2", "--outdir", tmp_path / "b", "--device", "cpu") == 0
    for name in names:  # the same seed gives the same image, wherever it sits in the list
        assert np.abs(pixels(tmp_path / "a" / name).astype(int) - pixels(tmp_path / "b" / name)).max() <= 1
    assert run("generate", "--ckpt", ckpt, "--seeds", "0-2,42", "--outdir", tmp_path / "c", "--device", "cpu") == 0
    for name in names:  # the same command gives the same bytes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_generate_compiled_gives_the_eager_images(ckpt, tmp_path):
    """--compile runs the synthesis network through torch.compile (AOTAutograd here, inductor by default)."""
    for outdir, extra in ((tmp_path / "eager", []), (tmp_path / "compiled", ["--compile", "aot_eager"])):
        assert run("generate", "--ckpt", ckpt, "--seeds", "0-2", "--outdir", outdir, "--device", "cpu", *extra) == 0
    for name in ("seed0000.png", "seed0001.png", "seed0002.png"):
        assert np.abs(pixels(tmp_path / "eager" / name).astype(int) - pixels(tmp_path / "compiled" / name)).max() <= 1
    assert run("generate", "--ckpt", ckpt, "--seeds", "0", "--outdir", tmp_path, "--compile", "fastest") == 2


def test_generate_from_a_training_checkpoint(ckpt, tmp_path):
    """A Lightning checkpoint (G_ema weights + the generator preset) gives the same images as the export."""
    G, _ = load_generator(ckpt)
    training_ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"G_ema.{k}": v for k, v in G.state_dict().items()},
                "hyper_parameters": {"generator": "demo", "generator_kwargs": {}}, "cur_nimg": 1234}, training_ckpt)
    for path, outdir in ((ckpt, tmp_path / "export"), (training_ckpt, tmp_path / "training")):
        assert run("generate", "--ckpt", path, "--seeds", "7", "--outdir", outdir, "--device", "cpu") == 0
    assert (tmp_path / "export" / "seed0007.png").read_bytes() == (tmp_path / "training" / "seed0007.png").read_bytes()


def test_generate_grid_latents_and_truncation(ckpt, tmp_path):
    argv = ["generate", "--ckpt", ckpt, "--seeds", "0-4", "--trunc", "0.7", "--cutoff", "4", "--batch", "2",
            "--outdir", tmp_path, "--grid", "--save-latents"]
    assert run(*argv) == 0
    grid = pixels(tmp_path / "grid.png")
    assert grid.shape == (2 * 32 + 3 * 2, 3 * 32 + 4 * 2, 3)  # 5 images: 3 columns, 2 rows, 2 px gaps
    assert np.array_equal(grid[36:68, 36:68], pixels(tmp_path / "seed0004.png"))  # row 1, column 1
    with np.load(tmp_path / "latents.npz") as f:
        assert f["seeds"].tolist() == [0, 1, 2, 3, 4]
        assert np.array_equal(f["z"], z_from_seeds(range(5), 128).numpy())
        ws = torch.from_numpy(f["w"])
        assert json.loads(str(f["meta"])) == {"trunc": 0.7, "cutoff": 4, "checkpoint": ckpt}
    G, _ = load_generator(ckpt)
    assert ws.shape == (5, G.num_ws, G.w_dim)
    with torch.no_grad():  # the saved w reproduce the images; truncation hit the first 4 style inputs only
        expected = G.mapping(z_from_seeds(range(5), 128), psi=0.7, cutoff=4)
        assert torch.allclose(ws, expected, atol=1e-5)
        untruncated = G.mapping(z_from_seeds(range(5), 128))
        assert torch.allclose(ws[:, 4:], untruncated[:, 4:], atol=1e-5)
        assert not torch.allclose(ws[:, :4], untruncated[:, :4], atol=1e-3)


@pytest.mark.parametrize("space", ["z", "w"])
def test_generate_interpolation(ckpt, tmp_path, space):
    argv = ["generate", "--ckpt", ckpt, "--seeds", "3,8", "--interpolate", "3", "8", "--frames", "4",
            "--space", space, "--outdir", tmp_path, "--device", "cpu"]
    assert run(*argv) == 0
    frames = sorted(p.name for p in (tmp_path / "interpolation").iterdir())
    assert frames == [f"frame{i:04d}.png" for i in range(4)]
    first, last = pixels(tmp_path / "interpolation" / frames[0]), pixels(tmp_path / "interpolation" / frames[-1])
    assert np.abs(first.astype(int) - pixels(tmp_path / "seed0003.png")).max() <= 1  # the ends are the seeds
    assert np.abs(last.astype(int) - pixels(tmp_path / "seed0008.png")).max() <= 1
    video = [p for p in tmp_path.iterdir() if p.stem == "interpolation" and p.is_file()]
    assert len(video) == 1 and video[0].suffix in (".mp4", ".gif")


# ---------------------------------------------------------------------------------------------
# fid


def _records(run_dir, name):
    return [json.loads(line) for line in (Path(run_dir) / f"metric-{name}.jsonl").read_text().splitlines()]


def test_fid_of_a_checkpoint_equals_fid_of_its_generated_images(ckpt, real_images, tmp_path, capsys):
    """fid with seed s over n samples measures exactly the images of generate --seeds s..s+n-1."""
    run_dir = tmp_path / "run"
    common = ["--ref-data", real_images, "--extractor", TINY, "--batch", "8", "--device", "cpu", "--run-dir", run_dir]
    assert run("fid", "--ckpt", ckpt, "--num", "12", "--seed", "5", "--kid", *common) == 0
    assert "fd_tiny12 = " in capsys.readouterr().out
    assert run("generate", "--ckpt", ckpt, "--seeds", "5-16", "--batch", "8", "--outdir", tmp_path / "fakes") == 0
    assert run("fid", "--images", tmp_path / "fakes", *common) == 0

    from_ckpt, from_images = _records(run_dir, "fd_tiny12")
    assert from_ckpt["value"] == pytest.approx(from_images["value"], abs=1e-6)
    assert from_ckpt["value"] > 0
    assert (from_ckpt["num_samples"], from_ckpt["seed"], from_ckpt["truncation"]) == (12, 5, 1.0)
    assert (from_ckpt["extractor"], from_ckpt["mode"], from_ckpt["checkpoint"]) == ("tiny", "clean", ckpt)
    assert from_ckpt["reference"].startswith("dataset-") and from_ckpt["reference_images"] == 24
    assert (from_images["seed"], from_images["checkpoint"]) == (None, str(tmp_path / "fakes"))
    kid, = _records(run_dir, "kd_tiny12")
    assert kid["kid_subsets"] == 100 and np.isfinite(kid["value"])


def test_fid_on_a_folder_takes_the_first_num_images(real_images, tmp_path):
    fakes = write_pngs(tmp_path / "fakes", random_images(10, seed=1, res=32))
    argv = ["fid", "--images", fakes, "--ref-data", real_images, "--extractor", TINY, "--run-dir", tmp_path]
    assert run(*argv, "--num", "6") == 0
    record, = _records(tmp_path, "fd_tiny6")
    assert record["num_samples"] == 6 and record["cur_nimg"] is None


def test_fid_stylenat_paper_protocol_records_its_settings_and_subset(ckpt, real_images, tmp_path, capsys):
    argv = ["fid", "--ckpt", ckpt, "--protocol", "stylenat-paper", "--ref-data", real_images, "--extractor", TINY,
            "--num", "12", "--ref-subset", "12", "--batch", "12", "--device", "cpu", "--run-dir", tmp_path]
    assert run(*argv) == 0
    assert "(12 images)" in capsys.readouterr().out  # the reference's image count
    record, = _records(tmp_path, "fd_tiny12")
    assert (record["protocol"], record["mode"], record["truncation"]) == ("stylenat-paper", "legacy_pytorch", 1.0)
    assert record["reference_images"] == 12 and record["reference_subset"]["size"] == 12
    assert record["reference_subset"]["seed"] == 0 and len(record["reference_subset"]["fingerprint"]) == 16


def test_fid_warns_when_the_training_data_filter_differs_from_the_reference(real_images, tmp_path):
    from stylenat.data import prepare

    torch.manual_seed(0)
    lanczos = save_generator(create_generator("demo"), tmp_path / "g.safetensors", "demo", {},
                             {"data_resize_filter": "lanczos"})
    box = prepare(real_images, tmp_path / "box.zip", 32, filter="box", progress=False).path
    with pytest.warns(UserWarning, match="the generator's training data was resized with the 'lanczos' filter but "
                                         "the reference statistics .* come from 'box'-resized images"):
        assert run("fid", "--ckpt", lanczos, "--ref-data", box, "--extractor", TINY, "--num", "4",
                   "--device", "cpu") == 0


def test_fid_offline_names_the_inception_file(ckpt, capsys):
    assert run("fid", "--ckpt", ckpt, "--ref-data", "unused", "--num", "8") == 2
    err = capsys.readouterr().err
    assert err.startswith("stylenat fid: error: Inception weights") and "inception-2015-12-05.pt" in err
    assert "STYLENAT_INCEPTION_WEIGHTS" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# attention-map


def test_attention_map_draws_each_head_group_window(ckpt, tmp_path, capsys):
    x, y = 0, 31  # a border query on the 32x32 stage: groups (7, 1) and (7, 4)
    assert run("attention-map", "--ckpt", ckpt, "--seed", "3", "--resolution", "32", "--query", f"{x},{y}",
               "--outdir", tmp_path) == 0
    assert "2 head-group maps" in capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["r32_block0_group0_k7_d1.png", "r32_block0_group1_k7_d4.png", "r32_block0_groups.png"]
    combined = pixels(tmp_path / "r32_block0_groups.png")
    size = 256  # the 32 px sample is shown 8x larger
    assert combined.shape == (size, 3 * size + 2 * 4, 3)
    sample = combined[:, :size].astype(int)
    for name, (kernel, dilation) in zip(names[:2], [(7, 1), (7, 4)]):
        drawn = pixels(tmp_path / name).astype(int)
        changed = (drawn != sample).any(axis=2).reshape(32, 8, 32, 8).any(axis=(1, 3))  # per map cell
        keys, _ = window_indices(32, kernel, dilation)
        expected = np.zeros((32, 32), bool)
        expected[np.ix_(keys[y].numpy(), keys[x].numpy())] = True
        assert np.array_equal(changed, expected), name
        assert (drawn[y * 8:(y + 1) * 8, x * 8:(x + 1) * 8] == [0, 255, 0]).all()  # the query, in green


def test_attention_map_with_probabilities(ckpt, tmp_path):
    argv = ["attention-map", "--ckpt", ckpt, "--resolution", "16", "--block", "1", "--query", "8,0", "--probs",
            "--outdir", tmp_path]
    assert run(*argv) == 0
    assert len(list(tmp_path.glob("r16_block1_group*_k7_d*.png"))) == 2


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    (folder / "truncated.ckpt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"state_dict": {"model.head.weight": torch.zeros(2, 2)},
                "hyper_parameters": {"model": "nat_mini", "num_classes": 10}}, folder / "classifier.ckpt")
    return folder


BAD_INPUT = [
    (["generate", "--ckpt", "{bad}/missing.safetensors", "--seeds", "0"], "checkpoint not found"),
    (["generate", "--ckpt", "{bad}/corrupt.safetensors", "--seeds", "0"], "cannot read checkpoint"),
    (["generate", "--ckpt", "{bad}/truncated.ckpt", "--seeds", "0"], "cannot read checkpoint"),
    (["generate", "--ckpt", "{bad}/classifier.ckpt", "--seeds", "0"], "another model kind (nat_mini)"),
    (["generate", "--ckpt", "{ckpt}", "--seeds", "0-x"], "malformed seeds '0-x'"),
    (["generate", "--ckpt", "{ckpt}", "--seeds", "9-3"], "malformed seeds '9-3'"),
    (["generate", "--ckpt", "{ckpt}"], "nothing to generate"),
    (["generate", "--ckpt", "{ckpt}", "--seeds", "0", "--cutoff", "99"], "--cutoff must lie in [1, 8]"),
    (["generate", "--ckpt", "{ckpt}", "--seeds", "0", "--batch", "0"], "--batch must be >= 1"),
    (["generate", "--ckpt", "{ckpt}", "--seeds", "0", "--device", "cuda:0"], "no GPU is available"),
    (["generate", "--ckpt", "{ckpt}", "--interpolate", "1", "2", "--frames", "1"], "--frames must be >= 2"),
    (["fid", "--ckpt", "{bad}/classifier.ckpt", "--ref-data", "{bad}"], "another model kind"),
    (["fid", "--ckpt", "{ckpt}", "--ref", "imagenet:256:train"], "no named reference statistics 'imagenet'"),
    (["fid", "--ckpt", "{ckpt}", "--ref", "ffhq:256:train"], "has splits trainval, trainval70k, not 'train'"),
    (["fid", "--ckpt", "{ckpt}", "--ref", "ffhq-256"], "NAME:RESOLUTION:SPLIT"),
    (["fid", "--ckpt", "{ckpt}", "--ref", "ffhq:256:trainval70k"], "images are 32x32"),
    (["fid", "--ckpt", "{ckpt}", "--ref-data", "{bad}", "--extractor", "nope"], "extractor must be 'inception'"),
    (["fid", "--ckpt", "{ckpt}", "--ref-data", "{bad}", "--extractor", TINY], "no images"),
    (["fid", "--images", "{bad}", "--ref-data", "{bad}"], "no images"),
    (["fid", "--images", "{bad}", "--ref-data", "{bad}", "--seed", "3"], "use them with --ckpt"),
    (["fid", "--ckpt", "{ckpt}", "--ref", "lsun_church:256:trainfull", "--mode", "legacy_pytorch"],
     "clean mode only, not legacy_pytorch"),
    (["fid", "--ckpt", "{ckpt}", "--protocol", "stylenat-paper", "--ref-data", "{bad}", "--mode", "clean"],
     "measures in mode legacy_pytorch, not clean: drop --mode"),
    (["fid", "--ckpt", "{ckpt}", "--protocol", "stylenat-paper", "--ref", "ffhq:256:trainval70k"],
     "give the dataset (--ref-data)"),
    (["fid", "--ckpt", "{ckpt}", "--protocol", "stylenat-paper", "--ref-data", "{bad}", "--trunc", "0.7"],
     "drop --trunc"),
    (["attention-map", "--ckpt", "{bad}/missing.ckpt", "--resolution", "16", "--query", "0,0"], "checkpoint not found"),
    (["attention-map", "--ckpt", "{ckpt}", "--resolution", "64", "--query", "0,0"], "choose from [8, 16, 32]"),
    (["attention-map", "--ckpt", "{ckpt}", "--resolution", "4", "--query", "0,0"], "not a neighborhood-attention"),
    (["attention-map", "--ckpt", "{ckpt}", "--resolution", "16", "--query", "16,0"], "outside the 16x16 map"),
    (["attention-map", "--ckpt", "{ckpt}", "--resolution", "16", "--query", "3"], "malformed --query '3'"),
    (["attention-map", "--ckpt", "{ckpt}", "--resolution", "16", "--query", "0,0", "--block", "2"], "0 or 1"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[f"{a[0]}:{m[:24]}" for a, m in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, ckpt, bad_files, tmp_path, capsys):
    argv = [a.format(bad=bad_files, ckpt=ckpt) for a in argv]
    assert run(*argv, "--outdir", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stylenat {argv[0]}: error: ") and message in err, err
