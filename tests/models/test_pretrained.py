"""Published weights to our files: ``stylenat convert`` recognises each format, infers the preset / variant from
the tensor shapes, writes an export that ``generate`` / ``evaluate-classifier`` use, and ``--ckpt`` takes a
reference StyleNAT checkpoint directly with the same result. The state dicts are synthetic, shaped exactly
like the published ones (names and shapes in tests/data/golden, copied from the reference implementations)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from stylenat.checkpoints import convert, identify, load_classifier, load_generator
from stylenat.cli import main
from stylenat.metrics.classification import LabelledImages, eval_transform, evaluate_classifier
from stylenat.models.convert import REFERENCE_PRESETS, infer_generator_preset
from stylenat.models.generator import create_generator
from stylenat.models.nat import create_model, list_models, to_transformers
from stylenat.models.pretrained import IMAGENET_EVAL, OURS_EVAL, Preprocessing, infer_classifier, read_source, shapes_only

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
G256, G1024 = "official_stylenat_g256_legacy_state_dict.txt", "official_stylenat_g1024_legacy_state_dict.txt"
D256, NAT_MINI, DINAT_MINI = ("official_stylenat_d256_state_dict.txt", "reference_nat_mini_state_dict.txt",
                              "reference_dinat_mini_state_dict.txt")


def read_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(tensor name, shape)`` per line of a golden list (``##`` lines are comments)."""
    rows = []
    for line in (GOLDEN / name).read_text().splitlines():
        if line.strip() and not line.startswith("##"):
            key, shape = line.split(" ", 1)
            rows.append((key, tuple(int(x) for x in re.findall(r"\d+", shape))))
    return rows


def synthetic(name: str, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A state dict with the golden list's names and shapes: small random values (meta: shapes only)."""
    g = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(shape, device="meta") for k, shape in read_shapes(name)}
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in read_shapes(name)}


def per_group_layout(state_dict: dict, preset: str) -> dict:
    """The newer reference layout (``attn.rpb.{i}``, one table per head group) for ``preset``'s head groups,
    built from a legacy state dict's names: what a checkpoint of that preset looks like."""
    with torch.device("meta"):
        G = create_generator(preset)
    out = {k: v for k, v in state_dict.items() if not re.search(r"\.attn\.rpb\d$", k)}  # legacy tables
    for name, module in G.named_modules():
        if hasattr(module, "group_heads"):
            stage, block = re.match(r"synthesis\.stages\.(\d+)\.blocks\.(\d+)\.attn", name).groups()
            for i, (heads, (kernel, _)) in enumerate(zip(module.group_heads, module.pattern)):
                out[f"layers.{stage}.blocks.{block}.attn.rpb.{i}"] = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1)
    return out


def run(*argv) -> int:
    return main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------
# Generators: preset inference (shapes only, on the meta device)


@pytest.mark.parametrize("name,preset", [(G256, "ffhq256"), (G1024, "ffhq1024")])
def test_preset_is_inferred_from_the_published_shapes(name, preset):
    assert infer_generator_preset(synthetic(name, device="meta")) == preset


def test_church_per_group_layout_is_told_from_ffhq():
    legacy = synthetic(G256, device="meta")
    assert infer_generator_preset(per_group_layout(legacy, "church256")) == "church256"
    assert infer_generator_preset(per_group_layout(legacy, "ffhq256")) == "ffhq256"  # newer layout of FFHQ


def test_a_generator_that_fits_no_preset_names_each_presets_problem():
    sd = synthetic(G256, device="meta")
    sd["style.1.weight"] = torch.empty(256, 512, device="meta")
    with pytest.raises(ValueError) as e:
        infer_generator_preset(sd)
    assert all(f"{p}: " in str(e.value) for p in REFERENCE_PRESETS)


def test_identify_each_format():
    g = synthetic(G256, device="meta")
    assert identify({"g": g, "g_ema": g, "d": {}}) == "stylenat-reference"
    assert identify({"state_dicts": {"g_ema": g}, "args": None}) == "stylenat-reference"
    assert identify(g) == "stylenat-reference"  # a bare generator state dict
    assert identify({"state_dict": {}, "hyper_parameters": {"generator": "demo"}}) == "gan-training"
    assert identify({"state_dict": {}, "hyper_parameters": {"model": "nat_mini", "num_classes": 10}}) \
        == "classifier-training"
    nat = synthetic(NAT_MINI, device="meta")
    assert identify(nat) == identify({"model": nat}) == identify({"state_dict_ema": nat}) == "nat-reference"
    assert identify(to_transformers(nat, "dinat")) == "nat-transformers"
    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        identify({"weights": torch.zeros(3)})


# ---------------------------------------------------------------------------------------------
# Generators: convert, generate, and --ckpt on the reference file (real tensors)


@pytest.fixture(scope="module")
def reference_ckpt(tmp_path_factory):
    """A reference FFHQ-256 checkpoint as released: g / g_ema / d under 'state_dicts', legacy RPB layout,
    with its training arguments as an argparse.Namespace."""
    import argparse

    path = tmp_path_factory.mktemp("reference") / "stylenat_ffhq256.pt"
    g_ema = synthetic(G256, seed=1)
    torch.save({"state_dicts": {"g": synthetic(G256, seed=2), "g_ema": g_ema, "d": synthetic(D256, seed=3)},
                "args": argparse.Namespace(size=256, batch=8)}, path)
    return path


def test_convert_then_generate_matches_the_in_memory_path(reference_ckpt, tmp_path, capsys):
    out = tmp_path / "G.safetensors"
    assert run("convert", reference_ckpt, out) == 0
    said = capsys.readouterr().out
    assert "reference StyleNAT checkpoint (g_ema, under 'state_dicts', legacy two-half RPB layout)" in said
    assert "preset ffhq256 (inferred from the tensor shapes)" in said and f"wrote {out}" in said
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["kind"] == "stylenat-generator" and f.metadata()["preset"] == "ffhq256"
    for ckpt, outdir in ((out, tmp_path / "export"), (reference_ckpt, tmp_path / "direct")):
        assert run("generate", "--ckpt", ckpt, "--seeds", "3", "--outdir", outdir, "--device", "cpu", "--batch", 1) == 0
    assert "converted in memory (preset ffhq256)" in capsys.readouterr().out
    assert (tmp_path / "export" / "seed0003.png").read_bytes() == (tmp_path / "direct" / "seed0003.png").read_bytes()


def test_bare_and_top_level_nesting_and_the_newer_layout(tmp_path, capsys):
    legacy = {k: v for k, v in synthetic(G256, seed=4).items()}
    top = tmp_path / "top.pt"
    torch.save({"g_ema": legacy}, top)
    bare = tmp_path / "bare.pt"
    torch.save(per_group_layout(legacy, "ffhq256"), bare)
    assert "g_ema, top level, legacy" in convert(top, tmp_path / "a.safetensors")
    assert "a bare generator state dict, per-group RPB layout" in convert(bare, tmp_path / "b.safetensors")


def test_our_training_checkpoint_converts_to_its_g_ema(tmp_path):
    torch.manual_seed(0)
    G = create_generator("demo")
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"G_ema.{k}": v for k, v in G.state_dict().items()},
                "hyper_parameters": {"generator": "demo", "generator_kwargs": {}}, "cur_nimg": 4000}, ckpt)
    said = convert(ckpt, tmp_path / "G.safetensors")
    assert "StyleNATGAN training checkpoint (G_ema of preset demo, 4000 images seen)" in said
    loaded, info = load_generator(tmp_path / "G.safetensors")
    assert info["cur_nimg"] == 4000
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), G.state_dict().values()))


@pytest.mark.parametrize("argv,message", [
    (["{src}", "{out}.pt"], "must end in .safetensors"),
    (["{missing}", "{out}"], "not found"),
    (["{export}", "{out}"], "already a generator export"),
    (["{junk}", "{out}"], "unrecognised checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    torch.manual_seed(0)
    from stylenat.models.checkpoint import save_generator

    paths = {"src": tmp_path / "x.pt", "out": tmp_path / "out.safetensors", "missing": tmp_path / "none.pt",
             "export": save_generator(create_generator("demo"), tmp_path / "g.safetensors", "demo", {}),
             "junk": tmp_path / "junk.pt"}
    torch.save({"weights": torch.zeros(2)}, paths["junk"])
    assert run("convert", *[a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stylenat convert: error:") and message in err and "\n" not in err
    assert not paths["out"].exists()


# ---------------------------------------------------------------------------------------------
# Classifiers


@pytest.mark.parametrize("file,model", [(NAT_MINI, "nat_mini"), (DINAT_MINI, "dinat_mini")])
def test_reference_classifier_converts_with_registry_name_and_classes(tmp_path, file, model):
    src = tmp_path / f"{model}_in1k_224.pth"
    state = synthetic(file)
    torch.save({"model": state, "epoch": 300}, src)
    said = convert(src, tmp_path / "c.safetensors")
    assert f"{model} (its shapes fit dinat_mini, nat_mini; the file name says {model})" in said
    assert "1000 classes" in said and "under 'model'" in said
    weights = load_classifier(tmp_path / "c.safetensors")
    assert (weights.model, weights.num_classes, weights.preprocessing) == (model, 1000, IMAGENET_EVAL)
    assert all(torch.equal(weights.state_dict[k], v) for k, v in state.items())


def test_every_registered_variant_is_recognised_from_its_shapes_and_file_name():
    for name in list_models():
        state_dict = shapes_only(name, 1000).state_dict()
        assert infer_classifier(state_dict, f"{name}_in1k_224.pth")[0] == name


def test_nat_and_dinat_shapes_agree_so_an_unnamed_file_needs_model(tmp_path):
    src = tmp_path / "weights.pth"
    torch.save(synthetic(NAT_MINI), src)
    with pytest.raises(ValueError, match="fits several variants .*dinat_mini, nat_mini.*--model"):
        convert(src, tmp_path / "c.safetensors")
    assert "nat_mini (named with --model)" in convert(src, tmp_path / "c.safetensors", model="nat_mini")


def test_transformers_state_dict_and_folder(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "dinat-mini-in1k-224"
    folder.mkdir()
    ours = synthetic(DINAT_MINI, seed=5)
    save_file(to_transformers(ours, "dinat"), str(folder / "model.safetensors"))
    said = convert(folder, tmp_path / "c.safetensors")
    assert said.startswith("found a transformers NAT / DiNAT state dict: dinat_mini")
    weights = load_classifier(tmp_path / "c.safetensors")
    assert all(torch.equal(weights.state_dict[k], v) for k, v in ours.items())


def tiny_classifier_ckpt(path: Path, num_classes: int = 6) -> dict:
    """One of our ImageClassifier checkpoints, as Lightning saves it (EMA weights under ema.module.)."""
    overrides = dict(depths=[1, 1], num_heads=[1, 2], embed_dim=16, mlp_ratio=1.0, kernel_size=3, img_size=32)
    torch.manual_seed(1)
    model, ema = (create_model("nat_mini", num_classes=num_classes, **overrides) for _ in range(2))
    state = {**{f"model.{k}": v for k, v in model.state_dict().items()},
             **{f"ema.module.{k}": v for k, v in ema.state_dict().items()}}
    torch.save({"state_dict": state, "hyper_parameters": {"model": "nat_mini", "num_classes": num_classes,
                                                          "model_overrides": overrides}}, path)
    return ema.state_dict()


def write_folder(root: Path, labels: list[int], size=(40, 36), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for i, label in enumerate(labels):
        (root / f"{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"{label}" / f"{i:03d}.png")
    return root


def test_our_classifier_checkpoint_converts_with_its_ema_and_our_transform(tmp_path):
    ema = tiny_classifier_ckpt(tmp_path / "last.ckpt")
    said = convert(tmp_path / "last.ckpt", tmp_path / "c.safetensors")
    assert "ImageClassifier training checkpoint (nat_mini, EMA weights)" in said and "6 classes" in said
    weights = load_classifier(tmp_path / "c.safetensors")
    assert weights.preprocessing == OURS_EVAL and weights.img_size == 32
    assert all(torch.equal(weights.state_dict[k], v) for k, v in ema.items())


def test_eval_transform_resizes_the_short_side_then_crops_the_centre():
    """timm's evaluation geometry, checked against a crop made by hand: at crop_pct 0.875 a 256 x 320 image
    keeps its size (short side 224 / 0.875 = 256) and loses 16 rows and 48 columns on each side."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    pre = Preprocessing((0.5, 0.25, 0.0), (0.5, 0.5, 1.0), crop_pct=0.875)
    x = eval_transform(pre, 224)(Image.fromarray(pixels))
    expected = torch.from_numpy(pixels[16:240, 48:272]).permute(2, 0, 1).double() / 255
    expected = (expected - torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1).double()) / \
        torch.tensor([0.5, 0.5, 1.0]).view(3, 1, 1).double()
    torch.testing.assert_close(x.double(), expected, atol=1e-6, rtol=0)


def test_evaluate_classifier_counts_top1_and_top5(tmp_path, capsys):
    """Labels are set so that exactly the first half of the images are the model's own top-1 prediction and
    the rest its 6th choice (outside its top-5): top-1 0.5 and top-5 0.5; then the command says so."""
    tiny_classifier_ckpt(tmp_path / "last.ckpt")
    weights = load_classifier(tmp_path / "last.ckpt")
    model = weights.build()
    probe = write_folder(tmp_path / "probe", [0] * 8)
    images = LabelledImages(probe, eval_transform(weights.preprocessing, weights.img_size))
    with torch.no_grad():
        ranked = model(torch.stack([images[i][0] for i in range(8)])).argsort(dim=1, descending=True)
    labels = [int(ranked[i, 0] if i < 4 else ranked[i, 5]) for i in range(8)]
    folder = tmp_path / "val"
    for i, label in enumerate(labels):  # the same images, filed under the chosen labels
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Path(images.paths[i]).rename(folder / str(label) / Path(images.paths[i]).name)
    result = evaluate_classifier(model, LabelledImages(folder, eval_transform(weights.preprocessing, 32)), 6)
    assert (result.top1, result.top5, result.num_images) == (0.5, 0.5, 8)
    assert result.images_per_second > 0
    assert run("evaluate-classifier", "--ckpt", tmp_path / "last.ckpt", "--data", folder, "--device", "cpu",
               "--workers", 0) == 0
    said = capsys.readouterr().out
    assert "top-1 50.00%, top-5 50.00% (8 images" in said and "img/s" in said and "centre crop 32" in said


def test_evaluate_classifier_rejects_a_folder_that_does_not_match_the_classes(tmp_path, capsys):
    tiny_classifier_ckpt(tmp_path / "last.ckpt")
    write_folder(tmp_path / "val", [0, 7])  # label 7 of a 6-class model
    assert run("evaluate-classifier", "--ckpt", tmp_path / "last.ckpt", "--data", tmp_path / "val", "--device",
               "cpu", "--workers", 0) == 2
    err = capsys.readouterr().err.strip()
    assert "labels up to 7" in err and "6 classes" in err and "\n" not in err


def test_read_source_of_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        read_source(tmp_path)
