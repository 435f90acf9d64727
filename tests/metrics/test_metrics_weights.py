"""Inception weights lookup: explicit path > environment variable > clean-fid's cache > download."""

from pathlib import Path

import pytest
import torch

from stylenat.metrics import weights
from stylenat.metrics.weights import (PYTORCH_FID, TORCHSCRIPT, WEIGHTS_ENV, InceptionWeightsNotFound,
                                      find_inception_weights)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """clean-fid's cache location, moved into the test's folder (never the real /tmp or torch hub)."""
    folder = tmp_path / "cleanfid-cache"
    folder.mkdir()
    monkeypatch.setattr(weights, "cleanfid_cache_path", lambda file: folder / file.name)
    return folder


def put(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"fake weights")
    return folder / name


@pytest.mark.parametrize("mode,file", [("clean", TORCHSCRIPT), ("legacy_tensorflow", TORCHSCRIPT),
                                       ("legacy_pytorch", PYTORCH_FID)])
def test_lookup_order(monkeypatch, tmp_path, cache, mode, file):
    explicit, env = put(tmp_path / "explicit", file.name), put(tmp_path / "env", file.name)
    cached = put(cache, file.name)
    monkeypatch.setenv(WEIGHTS_ENV, str(env.parent))
    assert find_inception_weights(mode, explicit) == explicit          # a file
    assert find_inception_weights(mode, explicit.parent) == explicit   # or its folder
    assert find_inception_weights(mode) == env
    monkeypatch.delenv(WEIGHTS_ENV)
    assert find_inception_weights(mode) == cached


def test_a_given_path_without_the_file_is_an_error_not_a_fallback(monkeypatch, tmp_path, cache):
    put(cache, TORCHSCRIPT.name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InceptionWeightsNotFound, match="inception-2015-12-05.pt"):
        find_inception_weights("clean", tmp_path / "empty")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "empty"))
    with pytest.raises(InceptionWeightsNotFound, match=WEIGHTS_ENV):
        find_inception_weights("clean")
    renamed = put(tmp_path, "my_inception.pt")
    with pytest.raises(InceptionWeightsNotFound, match="rename the file to 'inception-2015-12-05.pt'"):
        find_inception_weights("clean", renamed)


def test_offline_error_says_which_file_and_where(cache):
    with pytest.raises(InceptionWeightsNotFound) as e:
        find_inception_weights("legacy_pytorch")
    message = str(e.value)
    for needed in (PYTORCH_FID.name, PYTORCH_FID.url, WEIGHTS_ENV, str(cache / PYTORCH_FID.name), "unreachable"):
        assert needed in message


def test_downloads_only_when_allowed_and_reachable(monkeypatch, cache):
    fetched = []

    def fake_download(url, dst):
        fetched.append(url)
        with open(dst, "wb") as f:
            f.write(b"downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(InceptionWeightsNotFound, match="downloads are disabled"):
        find_inception_weights("clean", allow_download=False)
    assert fetched == []  # offline (the conftest makes every host unreachable)
    with pytest.raises(InceptionWeightsNotFound):
        find_inception_weights("clean")
    assert fetched == []
    monkeypatch.setattr(weights, "network_reachable", lambda url, timeout=3.0: True)
    assert find_inception_weights("clean") == cache / TORCHSCRIPT.name
    assert fetched == [TORCHSCRIPT.url]


def test_unknown_mode():
    with pytest.raises(ValueError, match="legacy_pytorch"):
        find_inception_weights("tensorflow")


def test_cleanfid_cache_locations():
    assert weights.cleanfid_cache_path(TORCHSCRIPT).name == TORCHSCRIPT.name
    assert weights.cleanfid_cache_path(PYTORCH_FID).parent == Path(torch.hub.get_dir()) / "checkpoints"
