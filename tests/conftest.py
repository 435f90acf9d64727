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
