"""NAT / DiNAT classifiers: sizes against the spec, parity with the reference, converters, shapes, registry.

Numbers are the NAT and DiNAT papers' tables. Big models are built on the meta device (shapes only), so
the whole file stays cheap; real arithmetic runs on the Mini models and on small inputs.
"""

import pytest
import torch
from reference_weights import load_golden, nat_recipe, read_keys
from safetensors.torch import save_file
from torch import nn

from stylenat.models.attention import NeighborhoodAttention2D
from stylenat.models.nat import (
    NAT,
    checkpoint_filter_fn,
    convert_reference,
    convert_transformers,
    create_model,
    dinat_dilations,
    level_sizes,
    list_models,
    to_transformers,
)

# Parameter counts (millions, 1000 classes): the spec's table; DiNAT sizes equal NAT's of the same name.
PARAMS_M = {
    "nat_mini": 19.98, "nat_tiny": 27.90, "nat_small": 50.74, "nat_base": 89.77,
    "dinat_mini": 19.98, "dinat_tiny": 27.90, "dinat_small": 50.74, "dinat_base": 89.77, "dinat_large": 200.94,
    "dinat_s_tiny": 28.29, "dinat_s_small": 49.61, "dinat_s_base": 87.77, "dinat_s_large": 196.53,
    "nat_isotropic_small": 22.00, "dinat_isotropic_small": 22.00,
    "nat_isotropic_base": 86.47, "dinat_isotropic_base": 86.47,
}

DINAT_224 = [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
DINAT_384 = [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]


def meta_model(name: str, **overrides) -> NAT:
    """The variant with its tensors on the meta device: built instantly, no memory, shapes only."""
    with torch.device("meta"):
        return create_model(name, **overrides)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: NAT, img_size: int) -> float:
    """Multiply-adds (G) of one 1-image forward, counted the way the spec's table was (fvcore plus the
    reference's NA handles): forward hooks add, per call, for a conv ``out.numel() * c_in/groups * kh * kw``;
    for a linear ``out.numel() * in_features``; for an NA layer on its (padded) ``H x W`` map q.k
    ``H*W*C*k^2`` plus the RPB adds ``heads*H*W*k^2``, and attn.v ``H*W*C*k^2``. Norms, activations,
    softmax and pooling are not counted. Runs on the meta device, so nothing is computed."""
    total = 0

    def conv(m, inputs, out):
        nonlocal total
        total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inputs, out):
        nonlocal total
        total += out.numel() * m.in_features

    def attention(m, inputs, out):
        nonlocal total
        b, h, w, c = inputs[0].shape
        h, w, area = max(h, m.window), max(w, m.window), m.pattern[0][0] ** 2
        total += 2 * b * h * w * c * area + b * m.num_heads * h * w * area

    hooks = {nn.Conv2d: conv, nn.Linear: linear, NeighborhoodAttention2D: attention}
    for module in model.modules():
        if type(module) in hooks:
            module.register_forward_hook(hooks[type(module)])
    with torch.no_grad():
        model(torch.empty(1, 3, img_size, img_size, device="meta"))
    return total / 1e9


# ---------------------------------------------------------------------------------------------
# Registry and sizes


def test_registry_holds_every_spec_variant():
    assert set(list_models()) == set(PARAMS_M)


def test_unknown_model_fails_clearly():
    with pytest.raises(ValueError, match=r"unknown model 'nat_huge'.*available: .*nat_mini"):
        create_model("nat_huge")
    with pytest.raises(ValueError, match="did you mean dinat_tiny"):
        create_model("dinat_tinny")


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_param_count_matches_spec(name):
    assert count_params(meta_model(name)) / 1e6 == pytest.approx(PARAMS_M[name], rel=0.01)


def test_param_count_dinat_large_11x11():
    assert count_params(meta_model("dinat_large", kernel_size=11, img_size=384)) / 1e6 == pytest.approx(
        201.14, rel=0.01)


@pytest.mark.parametrize("name, img_size, overrides, gmacs", [
    ("nat_mini", 224, {}, 2.69),
    ("nat_tiny", 224, {}, 4.30),
    ("nat_small", 224, {}, 7.77),
    ("nat_base", 224, {}, 13.68),
    ("dinat_large", 384, {"img_size": 384}, 89.51),
    ("dinat_s_tiny", 224, {}, 4.49),
    ("nat_isotropic_small", 224, {}, 4.31),
])
def test_gmacs_match_spec(name, img_size, overrides, gmacs):
    assert count_gmacs(meta_model(name, **overrides), img_size) == pytest.approx(gmacs, rel=0.05)


def test_layer_scale_where_the_reference_has_it():
    with_scale = {"nat_small", "nat_base", "dinat_base"}
    for name in ("nat_mini", "nat_small", "nat_base", "dinat_small", "dinat_base", "dinat_large", "dinat_s_tiny"):
        block = meta_model(name).levels[0].blocks[0]
        assert (block.gamma1 is not None) == (name in with_scale), name


# ---------------------------------------------------------------------------------------------
# Dilations


@pytest.mark.parametrize("name", ["dinat_mini", "dinat_tiny", "dinat_small", "dinat_base", "dinat_large"])
def test_dinat_dilations_at_224(name):
    third = DINAT_224[2][:6] if name == "dinat_mini" else DINAT_224[2]  # Mini has 6 layers there, not 18
    assert meta_model(name).dilations == [DINAT_224[0], DINAT_224[1], third, DINAT_224[3]]


def test_dinat_dilations_at_384():
    assert meta_model("dinat_large", img_size=384).dilations == DINAT_384
    assert meta_model("dinat_large", img_size=384, dilations=DINAT_384).dilations == DINAT_384
    assert meta_model("dinat_large", img_size=224, dilations=DINAT_224).dilations == DINAT_224


def test_dinat_s_and_isotropic_dilations():
    assert meta_model("dinat_s_tiny").dilations == [[1, 8], [1, 4], [1, 2, 1, 2, 1, 2], [1, 1]]
    assert meta_model("dinat_isotropic_small").dilations == [[1, 2] * 6]
    assert meta_model("nat_isotropic_small").dilations == [[1] * 12]


def test_dilation_helpers():
    assert level_sizes((224, 224), 4, 4) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert level_sizes((33, 47), 4, 4) == [(9, 12), (5, 6), (3, 3), (2, 2)]
    assert dinat_dilations([3, 4, 18, 5], level_sizes((384, 384), 4, 4), 7) == DINAT_384


def test_invalid_dilations_fail_at_construction_naming_the_layer():
    with pytest.raises(ValueError, match=r"level 0 layer 1: kernel_size 7 x dilation 13 = 91 exceeds the 56x56"):
        meta_model("dinat_large", dilations=DINAT_384)  # the 384 schedule on a 224 model
    with pytest.raises(ValueError, match=r"level 2 layer 3: .* largest valid dilation there is 2"):
        meta_model("dinat_mini", dilations=[[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 3, 1, 2], [1] * 5])
    with pytest.raises(ValueError, match="one value per layer"):
        meta_model("dinat_mini", dilations=[[1, 8], [1, 4, 1, 4], [1, 2] * 3, [1] * 5])


# ---------------------------------------------------------------------------------------------
# Numeric parity with the reference implementation


@pytest.mark.parametrize("name", ["nat_mini", "dinat_mini"])
def test_reference_logits(name):
    golden, _ = load_golden("reference_nat_dinat_mini_golden.safetensors")
    state = nat_recipe(f"reference_{name}_state_dict.txt")
    model = create_model(name).eval()
    model.load_state_dict(convert_reference(state, model))
    with torch.no_grad():
        logits = model(golden["x"])
    torch.testing.assert_close(logits, golden[f"logits.{name}"], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Converters


def random_state(model: nn.Module) -> dict:
    """Random CPU values with ``model``'s names and shapes (works for a meta-device model)."""
    return {k: torch.randn(v.shape) for k, v in model.state_dict().items()}


def test_reference_names_map_value_exactly():
    rows = read_keys("reference_dinat_mini_state_dict.txt")
    state = {name: torch.randn(shape) for name, shape in rows}
    converted = convert_reference(state, meta_model("dinat_mini"))
    assert converted.keys() == state.keys()
    assert all(converted[k] is state[k] for k in state)


@pytest.mark.parametrize("name, ours, theirs", [
    ("dinat_s_tiny", "levels.", "layers."),  # Swin skeleton: layers.i.{blocks,downsample}
    ("dinat_isotropic_small", "levels.0.blocks.", "layers."),  # isotropic: layers.j are the blocks
])
def test_reference_layers_names(name, ours, theirs):
    model = meta_model(name)
    state = random_state(model)
    reference = {key.replace(ours, theirs): value for key, value in state.items()}
    converted = convert_reference(reference, model)
    assert converted.keys() == state.keys()
    assert all(converted[k] is state[k] for k in state)


def test_transformers_names_and_values():
    model = create_model("nat_small", depths=(1, 1, 2, 1))
    ours = model.state_dict()
    theirs = to_transformers(ours, prefix="nat")
    shapes = {
        "nat.embeddings.patch_embeddings.projection.0.weight": (48, 3, 3, 3),
        "nat.embeddings.patch_embeddings.projection.1.bias": (96,),
        "nat.embeddings.norm.weight": (96,),
        "nat.encoder.levels.0.layers.0.layernorm_before.weight": (96,),
        "nat.encoder.levels.0.layers.0.attention.self.query.weight": (96, 96),
        "nat.encoder.levels.0.layers.0.attention.self.value.bias": (96,),
        "nat.encoder.levels.0.layers.0.attention.self.rpb": (3, 13, 13),
        "nat.encoder.levels.0.layers.0.attention.output.dense.weight": (96, 96),
        "nat.encoder.levels.0.layers.0.layernorm_after.bias": (96,),
        "nat.encoder.levels.0.layers.0.intermediate.dense.weight": (192, 96),
        "nat.encoder.levels.0.layers.0.output.dense.weight": (96, 192),
        "nat.encoder.levels.0.layers.0.layer_scale_parameters": (2, 96),
        "nat.encoder.levels.0.downsample.reduction.weight": (192, 96, 3, 3),
        "nat.encoder.levels.2.downsample.norm.weight": (768,),
        "nat.layernorm.weight": (768,),
        "classifier.weight": (1000, 768),
    }
    for key, shape in shapes.items():
        assert tuple(theirs[key].shape) == shape, key
    blocks = 5
    assert len(theirs) == len(ours) + 4 * blocks - blocks  # qkv w/b -> q, k, v w/b; gamma1, gamma2 -> one
    qkv = ours["levels.2.blocks.1.attn.qkv.weight"]
    layer = "nat.encoder.levels.2.layers.1."
    for i, part in enumerate(("query", "key", "value")):
        assert torch.equal(theirs[f"{layer}attention.self.{part}.weight"], qkv[384 * i:384 * (i + 1)])
    assert torch.equal(theirs[layer + "layer_scale_parameters"][1], ours["levels.2.blocks.1.gamma2"])


@pytest.mark.parametrize("name, prefix", [("nat_small", "nat"), ("dinat_mini", "dinat")])
def test_round_trip_reference_ours_transformers_ours(name, prefix):
    model = meta_model(name)
    reference = random_state(model)
    ours = convert_reference(reference, model)
    theirs = to_transformers(ours, prefix=prefix)
    back = convert_transformers(theirs, model)
    assert back.keys() == reference.keys()
    assert all(torch.equal(back[k], reference[k]) for k in reference)
    assert checkpoint_filter_fn(theirs, model).keys() == reference.keys()  # chosen by its unique key


def test_transformers_base_model_names_load():
    """``NatModel``/``DinatModel`` checkpoints: no prefix and no classifier (our fresh head stays)."""
    model = meta_model("dinat_mini", num_classes=0)
    ours = random_state(model)
    theirs = {k.removeprefix("dinat."): v for k, v in to_transformers(ours).items()}
    assert convert_transformers(theirs, model).keys() == ours.keys()


def test_converter_errors_list_missing_and_unmapped_names():
    model = meta_model("nat_mini")
    state = random_state(model)
    del state["norm.weight"]
    state["levels.0.blocks.0.attn.bogus"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(10, 512)
    with pytest.raises(ValueError) as error:
        convert_reference(state, model)
    message = str(error.value)
    assert "not in the model: levels.0.blocks.0.attn.bogus" in message
    assert "missing: norm.weight" in message
    assert "shape mismatch: head.weight (10, 512) vs model (1000, 512)" in message

    theirs = to_transformers(random_state(model))
    theirs["dinat.encoder.levels.0.layers.0.attention.self.gate.weight"] = torch.zeros(1)
    del theirs["dinat.encoder.levels.1.layers.0.attention.self.key.weight"]
    with pytest.raises(ValueError) as error:
        convert_transformers(theirs, model)
    assert "dinat.encoder.levels.0.layers.0.attention.self.gate.weight" in str(error.value)
    assert "levels.1.blocks.0.attn.qkv.weight (only query/value of query/key/value)" in str(error.value)

    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        checkpoint_filter_fn({"conv1.weight": torch.zeros(1)}, model)
    with pytest.raises(ValueError, match="only the conv-stem"):
        to_transformers(random_state(meta_model("dinat_s_tiny")))


def test_pretrained_files(tmp_path):
    small = {"depths": (1, 1, 2, 1), "num_classes": 10}
    source = create_model("dinat_mini", **small)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    torch.save({"model": source.state_dict()}, tmp_path / "reference.pth")
    save_file({k: v.contiguous().clone() for k, v in to_transformers(source.state_dict()).items()},
              tmp_path / "transformers.safetensors")
    for file in ("reference.pth", "transformers.safetensors"):
        model = create_model("dinat_mini", pretrained=tmp_path / file, out_indices=(0, 1, 2, 3), **small)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items()), file


# ---------------------------------------------------------------------------------------------
# Forward, backward, heads and backbone outputs


@pytest.mark.slow  # DiNAT-Mini at 224x224, forward and backward: among the heaviest CPU tests
def test_forward_backward_224():
    torch.manual_seed(0)
    model = create_model("dinat_mini", num_classes=10)
    logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 10) and logits.isfinite().all()
    logits.square().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and g.isfinite().all() for g in grads.values())
    assert grads["levels.0.blocks.1.attn.rpb"].abs().sum() > 0  # the dilated (d=8) layer's RPB learns


@pytest.mark.parametrize("name, tokens", [
    ("nat_mini", (2, 2, 512)),
    ("dinat_mini", (2, 2, 512)),  # built for 224: its dilated layers pad their small maps, as the reference
    ("dinat_s_tiny", (2, 2, 768)),
    ("dinat_isotropic_small", (3, 3, 384)),
])
def test_odd_input_size(name, tokens):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    features = model.forward_features(torch.randn(2, 3, 33, 47))
    assert features.shape == (2, *tokens)
    logits = model.forward_head(features)
    assert logits.shape == (2, 7) and logits.isfinite().all()
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_classifier_interface():
    model = create_model("nat_mini", depths=(1, 1, 1, 1))
    assert model.no_weight_decay() == {f"levels.{i}.blocks.0.attn.rpb" for i in range(4)}
    features = model.forward_features(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 2, 2, 512)
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    model.reset_classifier(5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert "dilations=[[1], [1], [1], [1]]" in repr(model)


@pytest.mark.parametrize("size, maps", [
    ((224, 224), [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]),
    ((33, 47), [(64, 9, 12), (128, 5, 6), (256, 3, 3), (512, 2, 2)]),
])
def test_backbone_maps(size, maps):
    model = create_model("nat_mini", out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outputs = model.forward_backbone(torch.randn(1, 3, *size))
    assert [tuple(o.shape[1:]) for o in outputs] == maps
    for o in outputs:  # each through its own freshly initialised LayerNorm: per-pixel mean 0, variance 1
        torch.testing.assert_close(o.mean(dim=1), torch.zeros_like(o[:, 0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(o.var(dim=1, unbiased=False), torch.ones_like(o[:, 0]), atol=1e-2, rtol=0)
    assert all(hasattr(model, f"norm{i}") for i in range(4))
    with pytest.raises(RuntimeError, match="out_indices"):
        create_model("nat_mini", depths=(1, 1, 1, 1)).forward_backbone(torch.randn(1, 3, 32, 32))
