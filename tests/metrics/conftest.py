"""Every metrics test runs offline with a private cache: no network, no download, no user files."""

import pytest


@pytest.fixture(autouse=True)
def offline(offline_metrics):
    """See ``offline_metrics`` in tests/conftest.py."""
