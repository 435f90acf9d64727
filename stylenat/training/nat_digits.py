"""``nat_digits``: an offline feature extractor for the digits demo, so its Fréchet distance can be tracked.

clean-fid's Inception cannot be downloaded on an offline machine and means little on 16x16 digits, so the
CPU demo (``configs/demo.yaml``) measures its samples with a network trained on the same data: a small
NAT (the recipe of ``configs/nat_digits.yaml``, read by :func:`recipe_from_config`; 0.45 M parameters)
trained with a fixed seed on the digits *train* split, about a minute on two CPU cores, ~99% top-1 on the
test split. Its features are the
classifier's pooled pre-logit tokens ``[N, 128]``.

Metrics computed with it are named after it (``fd_nat_digits1000``), never FID: the numbers are comparable
between runs that use the same trained extractor (same cache file), not with any published figure.

The trained weights are cached as ``$STYLENAT_CACHE/extractors/nat_digits-<recipe hash>.safetensors``
(default ``~/.cache/stylenat``), written atomically; training runs once per recipe and cache folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import Tensor

from stylenat.data.digits import NATIVE_RESOLUTION, DigitsDataset
from stylenat.metrics.extractors import MODES, check_images
from stylenat.metrics.reference import stats_cache_dir
from stylenat.models.checkpoint import save_safetensors_atomic
from stylenat.models.nat import NAT, create_model
from stylenat.training.classifier import param_groups, warmup_cosine

NAME = "nat_digits"
PREPROCESSING = f"native{NATIVE_RESOLUTION}"  # the extractor's own label in place of a clean-fid mode

CONFIG = "nat_digits.yaml"


def recipe_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The extractor's recipe from the classifier config (``configs/nat_digits.yaml`` as a dict): its
    architecture, data resolution, schedule, optimizer and seed, without its regularisers (drop path,
    gradient clipping). The recipe is the cache key of the trained weights."""
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    layout = model["model_overrides"]
    return dict(model=model["model"], depths=layout["depths"], num_heads=layout["num_heads"],
                embed_dim=layout["embed_dim"], mlp_ratio=layout["mlp_ratio"], kernel_size=layout["kernel_size"],
                resolution=data["resolution"], epochs=config["trainer"]["max_epochs"], batch_size=data["batch_size"],
                lr=model["lr"], weight_decay=model["weight_decay"], warmup_epochs=model["warmup_epochs"],
                label_smoothing=model["label_smoothing"], seed=config["seed_everything"])


def _packaged_config() -> dict[str, Any]:
    """``configs/nat_digits.yaml`` as shipped: ``stylenat/configs`` links to the repository's ``configs/`` and
    is package data, so the same file is read from a checkout and from an installed package."""
    return yaml.safe_load((resources.files("stylenat") / "configs" / CONFIG).read_text(encoding="utf-8"))


RECIPE: dict[str, Any] = recipe_from_config(_packaged_config())


def _build(recipe: dict[str, Any]) -> NAT:
    return create_model(recipe["model"], num_classes=10, depths=recipe["depths"], num_heads=recipe["num_heads"],
                        embed_dim=recipe["embed_dim"], mlp_ratio=recipe["mlp_ratio"],
                        kernel_size=recipe["kernel_size"], img_size=recipe["resolution"])


def _split_tensors(split: str, resolution: int) -> tuple[Tensor, Tensor]:
    """The digits ``split`` as images ``[N, 3, R, R]`` in [-1, 1] and labels ``[N]``."""
    dataset = DigitsDataset(resolution, split=split, use_labels=True)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)


@torch.no_grad()
def accuracy(model: NAT, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``images [N, 3, R, R]`` in [-1, 1] with ``labels [N]``."""
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_digits_classifier(recipe: dict[str, Any] = RECIPE) -> tuple[NAT, float]:
    """Train the recipe's NAT on the digits train split; returns it (in eval mode) and its test accuracy.

    The classifier recipe's pieces (:func:`~stylenat.training.classifier.param_groups`,
    :func:`~stylenat.training.classifier.warmup_cosine` stepped per iteration) with label smoothing.
    Deterministic for a thread count: every random draw comes from ``recipe["seed"]`` inside a forked
    RNG, so the caller's random state is left as it was.
    """
    images, labels = _split_tensors("train", recipe["resolution"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = _build(recipe)
        optimizer = torch.optim.AdamW(param_groups(model, recipe["weight_decay"]), lr=recipe["lr"])
        steps_per_epoch = math.ceil(len(images) / recipe["batch_size"])
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
            warmup_cosine, warmup_steps=recipe["warmup_epochs"] * steps_per_epoch,
            total_steps=recipe["epochs"] * steps_per_epoch))
        model.train()
        for _ in range(recipe["epochs"]):
            for batch in torch.randperm(len(images)).split(recipe["batch_size"]):
                loss = F.cross_entropy(model(images[batch]), labels[batch], label_smoothing=recipe["label_smoothing"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    test_images, test_labels = _split_tensors("test", recipe["resolution"])
    return model.eval(), accuracy(model, test_images, test_labels)


def cached_digits_classifier(recipe: dict[str, Any] = RECIPE, cache_dir: str | os.PathLike | None = None,
                             verbose: bool = True) -> NAT:
    """The recipe's trained NAT, from the cache or trained now and cached (atomic write)."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or stats_cache_dir().parent / "extractors").expanduser() / f"{NAME}-{key}.safetensors"
    if path.is_file():
        with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: spend no caller randomness
            model = _build(recipe)
        model.load_state_dict(load_file(path))
        return model.eval()
    if verbose:
        print(f"[{NAME}] training the digits feature extractor once (about a minute on 2 CPU cores) -> {path}",
              flush=True)
    model, test_top1 = train_digits_classifier(recipe)
    if verbose:
        print(f"[{NAME}] test top-1 {test_top1:.3f}", flush=True)
    save_safetensors_atomic(model.state_dict(), path, {"recipe": json.dumps(recipe), "test_top1": f"{test_top1:.4f}"})
    return model


class ClassifierFeatures:
    """A classifier's pooled pre-logit features as a :class:`~stylenat.metrics.FeatureExtractor`, and its class
    probabilities from them (a :class:`~stylenat.metrics.readability.Classifier`, for readability).

    ``__call__``: uint8 ``[N, 3, H, W]`` -> float32 ``[N, model.num_features]``. Images are resized to the
    classifier's ``resolution`` (bilinear, antialiased) when they are not that size already, and scaled to
    [-1, 1] as the data package serves them.
    """

    def __init__(self, model: NAT, *, name: str, resolution: int, device: str | torch.device = "cpu"):
        self.name, self.mode, self.resolution = name, PREPROCESSING, resolution
        self.feature_dim = model.num_features
        self.device = torch.device(device)
        self.network = model.eval().requires_grad_(False).to(self.device)

    def __repr__(self) -> str:
        return f"ClassifierFeatures(name={self.name!r}, mode={self.mode!r}, feature_dim={self.feature_dim})"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        check_images(images)
        x = images.to(self.device, torch.float32) / 127.5 - 1
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.network.forward_head(self.network.forward_features(x), pre_logits=True).float()

    @torch.no_grad()
    def class_probabilities(self, features: np.ndarray | Tensor) -> Tensor:
        """Features ``[N, num_features]`` from :meth:`__call__` -> the classifier's softmax ``[N, num_classes]``."""
        features = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        return self.network.head(features).softmax(dim=1).cpu()


def nat_digits_extractor(mode: str = "clean", device: str | torch.device = "cpu") -> ClassifierFeatures:
    """The ``nat_digits`` extractor (a factory for ``build_extractor("stylenat.training.nat_digits:nat_digits_extractor")``).

    ``mode`` is accepted because every extractor factory receives the configured clean-fid mode; this
    extractor has one preprocessing of its own (``"native32"``, recorded in every metric record) and ignores it.
    """
    if mode not in MODES:
        raise ValueError(f"unknown clean-fid mode {mode!r}; expected one of {MODES}")
    return ClassifierFeatures(cached_digits_classifier(), name=NAME, resolution=NATIVE_RESOLUTION, device=device)
