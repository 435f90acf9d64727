"""The nat_digits extractor: trained once per recipe into the cache, loaded after, leaves the caller's
random state alone, and its Fréchet distance tells real digits from corrupted ones."""

import copy
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from stylenat.metrics import extractor_digest, feature_stats, frechet_distance
from stylenat.metrics.readability import readability
from stylenat.training import nat_digits

TINY = {**nat_digits.RECIPE, "epochs": 1, "depths": [1, 1, 1]}


def test_recipe_is_read_from_the_digits_config():
    """configs/nat_digits.yaml is the one copy of the recipe, also as package data (stylenat/configs)."""
    text = (Path(__file__).parents[2] / "configs" / "nat_digits.yaml").read_text()
    assert (resources.files("stylenat") / "configs" / "nat_digits.yaml").read_text() == text
    config = yaml.safe_load(text)
    assert nat_digits.RECIPE == nat_digits.recipe_from_config(config)
    assert nat_digits.RECIPE["epochs"] == config["trainer"]["max_epochs"]
    assert nat_digits.RECIPE["kernel_size"] == config["model"]["init_args"]["model_overrides"]["kernel_size"]
    changed = copy.deepcopy(config)
    changed["model"]["init_args"]["model_overrides"]["embed_dim"] = 64
    changed["data"]["init_args"]["batch_size"] = 32
    recipe = nat_digits.recipe_from_config(changed)
    assert (recipe["embed_dim"], recipe["batch_size"]) == (64, 32)


def test_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    state = torch.get_rng_state()
    model = nat_digits.cached_digits_classifier(TINY, cache_dir=tmp_path, verbose=False)
    assert torch.equal(torch.get_rng_state(), state), "training must not consume the caller's random numbers"
    (cached,) = tmp_path.glob("nat_digits-*.safetensors")
    assert not list(tmp_path.glob("*.tmp")), "the cache file is published atomically"
    monkeypatch.setattr(nat_digits, "train_digits_classifier", lambda recipe: pytest.fail("trained again"))
    again = nat_digits.cached_digits_classifier(TINY, cache_dir=tmp_path, verbose=False)
    assert torch.equal(torch.get_rng_state(), state), "loading must not consume the caller's random numbers"
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_recipe_change_is_a_different_cache_entry(tmp_path):
    nat_digits.cached_digits_classifier(TINY, cache_dir=tmp_path, verbose=False)
    nat_digits.cached_digits_classifier({**TINY, "seed": 1}, cache_dir=tmp_path, verbose=False)
    assert len(list(tmp_path.glob("nat_digits-*.safetensors"))) == 2


def test_extractor_protocol_and_preprocessing(tmp_path):
    model = nat_digits.cached_digits_classifier(TINY, cache_dir=tmp_path, verbose=False)
    extractor = nat_digits.ClassifierFeatures(model, name="nat_digits", resolution=32)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    features = extractor(images)
    assert features.shape == (5, extractor.feature_dim) == (5, 128) and features.dtype == torch.float32
    assert extractor.mode == "native32"
    with torch.no_grad():  # the features give the classifier's own probabilities
        expected = model(images.float() / 127.5 - 1).softmax(1)
    torch.testing.assert_close(extractor.class_probabilities(features.numpy()), expected, rtol=0, atol=1e-6)
    upscaled = torch.nn.functional.interpolate(images.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    assert extractor(upscaled).shape == (5, 128)  # other sizes are resized to 32x32 first
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())
    with pytest.raises(ValueError, match="clean-fid mode"):
        nat_digits.nat_digits_extractor(mode="bicubic")


def test_cached_statistics_follow_the_classifier_weights(tmp_path):
    model = nat_digits.cached_digits_classifier(TINY, cache_dir=tmp_path, verbose=False)
    other = nat_digits.cached_digits_classifier({**TINY, "seed": 1}, cache_dir=tmp_path, verbose=False)
    digest = extractor_digest(nat_digits.ClassifierFeatures(model, name="nat_digits", resolution=32))
    assert digest is not None
    assert digest != extractor_digest(nat_digits.ClassifierFeatures(other, name="nat_digits", resolution=32))


@pytest.mark.slow
def test_default_recipe_is_accurate_and_separates_real_from_corrupted(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path))
    extractor = nat_digits.nat_digits_extractor()
    test_images, test_labels = nat_digits._split_tensors("test", 32)
    assert nat_digits.accuracy(extractor.network, test_images, test_labels) >= 0.95

    def stats(images):  # images in [-1, 1] -> uint8 -> features -> (mu, sigma)
        uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return feature_stats(extractor(uint8).numpy())

    train_images, _ = nat_digits._split_tensors("train", 32)
    real = stats(train_images)
    same = frechet_distance(*real, *stats(test_images))
    blurred = frechet_distance(*real, *stats(torch.nn.functional.avg_pool2d(test_images, 4, 1, 2)[..., :32, :32]))
    noise = frechet_distance(*real, *stats(torch.rand_like(test_images) * 2 - 1))
    assert same < blurred < noise

    def readable(images):  # the share the classifier is sure of (>= 0.9)
        uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return readability(extractor.class_probabilities(extractor(uint8)))[0]

    assert readable(test_images) > 0.5 > 0.1 > readable(torch.rand_like(test_images) * 2 - 1)
