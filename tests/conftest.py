"""Shared pytest setup: GPU tests skip cleanly without a GPU; sweep sizes scale with NATTEN_OPS_SWEEP."""

import os

import pytest
import torch

try:
    from hypothesis import settings

    # NATTEN_OPS_SWEEP=10 runs ten times as many property-based examples (default sized for CI).
    settings.register_profile("ci", max_examples=int(20 * float(os.environ.get("NATTEN_OPS_SWEEP", "1"))),
                              deadline=None)
    settings.load_profile("ci")
except ImportError:  # hypothesis is part of the test extra
    pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def offline_metrics(monkeypatch, tmp_path_factory):
    """No network, no download, no user files: metrics code runs against a private cache."""
    from stylenat.metrics import weights

    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download a file")

    monkeypatch.setattr(weights, "network_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path_factory.mktemp("stylenat-cache")))
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
