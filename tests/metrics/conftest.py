"""Every metrics test runs offline with a private cache: no network, no download, no user files."""

import pytest
import torch

from stylenat.metrics import weights


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download a file")

    monkeypatch.setattr(weights, "network_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path_factory.mktemp("stylenat-cache")))
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
