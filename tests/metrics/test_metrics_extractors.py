"""Extractors: clean-fid's preprocessing reproduced exactly, honest names, the Inception wiring offline."""

import dataclasses
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from cleanfid import inception_pytorch
from cleanfid.fid import get_folder_features
from metrics_helpers import TinyNet, random_images, tiny_extractor, write_pngs
from torch import nn

from stylenat.metrics import INCEPTION, CleanFIDExtractor, FeatureExtractor, inception_extractor, metric_name, weights


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow", "legacy_pytorch"])
def test_same_features_as_cleanfid_on_a_folder(tmp_path, mode):
    images = random_images(12, seed=0)
    folder = write_pngs(tmp_path / "imgs", images)
    theirs = get_folder_features(str(folder), TinyNet().eval(), num_workers=0, batch_size=5,
                                 device=torch.device("cpu"), mode=mode, verbose=False)
    ours = tiny_extractor(mode)(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)


def test_protocol_and_input_checks():
    ext = tiny_extractor()
    assert isinstance(ext, FeatureExtractor)
    assert (ext.name, ext.mode, ext.feature_dim) == ("tiny", "clean", 8)
    with pytest.raises(ValueError, match="uint8"):
        ext(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="returned"):
        CleanFIDExtractor(TinyNet(), name="tiny", feature_dim=5)(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown clean-fid mode"):
        tiny_extractor("bilinear")


def test_only_cleanfid_inception_is_called_fid():
    assert metric_name("fd", INCEPTION, 50_000) == "fid50k"
    assert metric_name("kd", INCEPTION, 10_000) == "kid10k"
    assert metric_name("fd", "dinov2", 50_000) == "fd_dinov250k"
    assert metric_name("kd", "tiny", 48) == "kd_tiny48"
    with pytest.raises(ValueError, match="reserved"):
        CleanFIDExtractor(TinyNet(), name=INCEPTION, feature_dim=8)
    with pytest.raises(ValueError, match="must match"):
        metric_name("fd", "my net/v2", 10)


class FakeInception(nn.Module):
    """Stands in for the TorchScript file's interface: ``layers`` and ``forward(x, return_features)``."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2048))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers((x - 128) / 128)


def publish(monkeypatch, path, mode):
    """Make ``path`` the published file of ``mode`` (its digest is checked before loading)."""
    file = dataclasses.replace(weights.WEIGHTS_FOR_MODE[mode], sha256=weights.sha256_of(path))
    monkeypatch.setitem(weights.WEIGHTS_FOR_MODE, mode, file)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_inception_extractor_loads_torchscript_weights_from_a_path(tmp_path, mode, monkeypatch):
    torch.jit.script(FakeInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    publish(monkeypatch, tmp_path / "inception-2015-12-05.pt", mode)
    ext = inception_extractor(mode, weights=tmp_path)
    assert (ext.name, ext.mode, ext.feature_dim) == (INCEPTION, mode, 2048)
    feats = ext(torch.from_numpy(random_images(3, seed=1)).permute(0, 3, 1, 2))
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32


def test_inception_extractor_loads_pytorch_fid_weights_from_a_path(tmp_path, monkeypatch):
    captured = {}

    def capture(module, state_dict, *args, **kwargs):  # keep the architecture's own (random) weights
        captured.update(module.state_dict())

    with mock.patch.object(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(nn.Module, "load_state_dict", capture), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inception_pytorch.fid_inception_v3()
    torch.save(captured, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    publish(monkeypatch, tmp_path / "pt_inception-2015-12-05-6726825d.pth", "legacy_pytorch")
    ext = inception_extractor("legacy_pytorch", weights=tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    feats = ext(torch.from_numpy(random_images(2, seed=2)).permute(0, 3, 1, 2))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    first_conv = ext.network.net.blocks[0][0].conv.weight
    torch.testing.assert_close(first_conv, captured["Conv2d_1a_3x3.conv.weight"])  # our file's weights


def test_cleanfid_resizer_leaves_warnings_alone():
    before = list(warnings.filters)
    tiny_extractor("legacy_pytorch")  # clean-fid's torch resizer calls warnings.filterwarnings("ignore")
    assert warnings.filters == before
