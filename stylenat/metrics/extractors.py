"""Feature extractors: the protocol, clean-fid's preprocessing, and clean-fid's Inception.

An extractor maps uint8 images ``[N, 3, H, W]`` in [0, 255] to float features ``[N, D]``. Its
``name`` and ``mode`` label every statistic and every metric record, so numbers from different
networks or preprocessing never mix:

- ``inception_v3`` is reserved for clean-fid's Inception, the only extractor whose Fréchet distance
  is called FID and whose kernel distance is called KID, with StyleGAN's names: ``fid50k_full`` for 50k
  samples against the full dataset, ``fid50k`` against 50k real images (a subset);
- any other extractor is named in the metric: ``fd_<name>50k``, ``kd_<name>50k`` (its records state how
  many reference images it used).

:func:`extractor_digest` hashes an extractor's network weights, so that cached statistics are keyed by the
weights and not only by the name.

:class:`CleanFIDExtractor` applies clean-fid's per-image preprocessing for a mode and then any
network; :func:`inception_extractor` builds it around clean-fid's Inception, with weights found
offline-first by :func:`stylenat.metrics.weights.find_inception_weights`. Tests and offline users
inject their own small network into the same class.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

from stylenat.metrics.weights import find_inception_weights
from stylenat.optional import require

INCEPTION = "inception_v3"
MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def cleanfid_module(name: str) -> ModuleType:
    """clean-fid's module ``name`` (``"cleanfid.resize"``, ...), imported on first use: without clean-fid
    everything but its preprocessing and Inception (FID / KID) works."""
    return require(name, "clean-fid", "clean-fid's preprocessing and Inception (FID / KID)")


@runtime_checkable
class FeatureExtractor(Protocol):
    """``__call__``: uint8 ``[N, 3, H, W]`` in [0, 255] -> float ``[N, feature_dim]``."""

    name: str         # labels metrics and cache keys; "inception_v3" only for clean-fid's Inception
    mode: str         # the preprocessing protocol (a clean-fid mode, or the extractor's own label)
    feature_dim: int
    # Optional: ``network`` (an nn.Module holding every weight the features depend on). Its weights key the
    # cached reference statistics (:func:`extractor_digest`); without it nothing is cached.

    def __call__(self, images: Tensor) -> Tensor: ...


def check_name(name: str, what: str = "extractor name") -> str:
    """Names that go into file names and metric names: letters, digits, ``_ . -``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} must match {_NAME.pattern}")
    return name


def metric_name(kind: str, extractor_name: str, num_samples: int, full_reference: bool = False) -> str:
    """``fid50k`` / ``kid50k`` for clean-fid's Inception (``fid50k_full`` / ``kid50k_full`` when the reference
    statistics cover the full dataset, StyleGAN's names), ``fd_<name>50k`` / ``kd_<name>50k`` otherwise.

    ``kind`` is ``"fd"`` (Fréchet distance), ``"kd"`` (kernel distance) or ``"readable"`` (the readable share
    of :mod:`stylenat.metrics.readability`: ``readable_<name>1k``); counts that are not whole thousands are
    written out (``fd_tiny48``).
    """
    if kind not in ("fd", "kd", "readable"):
        raise ValueError(f"metric kind must be 'fd', 'kd' or 'readable', got {kind!r}")
    inception = extractor_name == INCEPTION and kind != "readable"
    base = {"fd": "fid", "kd": "kid"}[kind] if inception else f"{kind}_{check_name(extractor_name)}"
    count = f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)
    return f"{base}{count}" + ("_full" if inception and full_reference else "")


def extractor_digest(extractor: FeatureExtractor) -> str | None:
    """12 hex digits of a hash of the extractor's network weights (every state-dict entry: name, dtype, shape,
    bytes), for cache keys; ``None`` when the extractor exposes no ``network`` module (its weights are
    unknown, so statistics computed with it must not be cached). Computed once per extractor object."""
    cached = getattr(extractor, "_weights_digest", None)
    if cached is not None:
        return cached
    network = getattr(extractor, "network", None)
    if not isinstance(network, nn.Module):
        return None
    h = hashlib.sha256(b"stylenat-extractor-weights-v1\0")
    for name, tensor in sorted(network.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[:12]
    try:
        extractor._weights_digest = digest
    except AttributeError:  # an immutable extractor object: recompute next time
        pass
    return digest


def check_images(images: Tensor) -> None:
    """Raise unless ``images`` is a uint8 tensor ``[N, 3, H, W]``."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"feature extractors take uint8 images [N, 3, H, W] in [0, 255], got {what} "
                         "(convert generator output with stylenat.metrics.to_uint8)")


class _PytorchFIDInception(nn.Module):
    """clean-fid's port of pytorch-fid's Inception (mode ``legacy_pytorch``), loaded from a local file."""

    def __init__(self, weights: Path):
        super().__init__()
        # clean-fid builds this network only from a URL (torch hub); hand it the local file instead.
        state = torch.load(weights, map_location="cpu", weights_only=True)
        inception_pytorch = cleanfid_module("cleanfid.inception_pytorch")
        with (mock.patch.object(inception_pytorch, "load_state_dict_from_url", lambda *args, **kwargs: state),
              warnings.catch_warnings()):
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # clean-fid's old API use
            self.net = inception_pytorch.InceptionV3(output_blocks=[3], resize_input=False)

    def forward(self, x: Tensor) -> Tensor:
        """float ``[N, 3, 299, 299]`` in [0, 255] -> ``[N, 2048]`` (as clean-fid's ``pytorch_inception``)."""
        return self.net(x / 255)[0].squeeze(-1).squeeze(-1)


class CleanFIDExtractor:
    """clean-fid's preprocessing for ``mode``, then ``network``.

    Each uint8 image goes through clean-fid's resizer exactly as clean-fid treats generated images:
    ``clean``: PIL bicubic on float channels to 299x299; ``legacy_pytorch``: torch bilinear to 299x299;
    ``legacy_tensorflow``: unchanged (the TorchScript Inception resizes inside). The float batch
    ``[N, 3, h, w]`` in [0, 255] then goes to ``network``, which returns ``[N, feature_dim]``.
    """

    def __init__(self, network: nn.Module, *, name: str, feature_dim: int, mode: str = "clean",
                 device: str | torch.device = "cpu"):
        if mode not in MODES:
            raise ValueError(f"unknown clean-fid mode {mode!r}; expected one of {MODES}")
        inceptions = (cleanfid_module("cleanfid.inception_torchscript").InceptionV3W, _PytorchFIDInception)
        if check_name(name) == INCEPTION and not isinstance(network, inceptions):
            raise ValueError(f"the name {INCEPTION!r} is reserved for clean-fid's Inception "
                             "(build it with inception_extractor); name your network after itself")
        self.name, self.mode, self.feature_dim = name, mode, int(feature_dim)
        self.device = torch.device(device)
        self.network = network.eval().requires_grad_(False).to(self.device)
        with warnings.catch_warnings():  # clean-fid's torch resizer switches all warnings off process-wide
            self._resize = cleanfid_module("cleanfid.resize").build_resizer(mode)

    def __repr__(self) -> str:
        return f"CleanFIDExtractor(name={self.name!r}, mode={self.mode!r}, feature_dim={self.feature_dim})"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``[N, 3, H, W]`` -> float32 ``[N, feature_dim]`` on the extractor's device."""
        check_images(images)
        hwc = images.permute(0, 2, 3, 1).cpu().numpy()
        batch = np.stack([np.asarray(self._resize(img), dtype=np.float32) for img in hwc])  # [N, h, w, 3]
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
        feats = self.network(x)
        if feats.shape != (len(images), self.feature_dim):
            raise ValueError(f"extractor {self.name!r} returned {tuple(feats.shape)}, expected "
                             f"{(len(images), self.feature_dim)}")
        return feats.float()


def inception_extractor(mode: str = "clean", weights: str | os.PathLike | None = None, *,
                        device: str | torch.device = "cpu", allow_download: bool = True) -> CleanFIDExtractor:
    """clean-fid's Inception (2048 pool features) in ``mode``; ``weights`` as for ``find_inception_weights``.

    The only extractor whose metrics are called FID / KID. ``DataParallel`` is never used (clean-fid's
    DataParallel path breaks off cuda:0); shard across ranks instead.
    """
    path = find_inception_weights(mode, weights, allow_download=allow_download)
    if mode == "legacy_pytorch":
        network: nn.Module = _PytorchFIDInception(path)
    else:
        with warnings.catch_warnings():  # clean-fid's file is TorchScript, whose loader torch now deprecates
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load", category=FutureWarning)
            InceptionV3W = cleanfid_module("cleanfid.inception_torchscript").InceptionV3W
            network = InceptionV3W(str(path.parent), download=False, resize_inside=mode == "legacy_tensorflow")
    return CleanFIDExtractor(network, name=INCEPTION, feature_dim=2048, mode=mode, device=device)


def build_extractor(spec: str | FeatureExtractor | None, *, mode: str = "clean",
                    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """A feature extractor from its description.

    ``None`` or ``"inception"``: clean-fid's Inception in ``mode`` (``weights`` as for
    :func:`stylenat.metrics.find_inception_weights`; the only extractor whose metrics are called FID/KID).
    ``"package.module:function"``: ``function(mode=mode, device=device)`` must return a
    :class:`~stylenat.metrics.FeatureExtractor` (e.g. a :class:`~stylenat.metrics.CleanFIDExtractor`
    around a classifier trained offline, labelled with its own name). An extractor object is returned as is.
    """
    if spec is None or spec == "inception":
        return inception_extractor(mode, weights, device=device)
    if weights is not None:
        raise ValueError("Inception weights apply only to the 'inception' extractor, not to " + repr(spec))
    if isinstance(spec, FeatureExtractor):
        return spec
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise ValueError(f"extractor must be 'inception' or a factory 'package.module:function', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load the extractor factory {spec!r}: {err}") from err
    extractor = factory(mode=mode, device=device)
    if not isinstance(extractor, FeatureExtractor):
        raise ValueError(f"the extractor factory {spec!r} returned {type(extractor).__name__}, not a feature "
                         "extractor (name, mode, feature_dim, __call__)")
    return extractor
