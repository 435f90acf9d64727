"""Inception weights lookup: explicit path > environment variable > our cache > clean-fid's cache > download;
every file checked against its published SHA-256; every network call bounded in time."""

import dataclasses
import hashlib
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from stylenat.metrics import weights
from stylenat.metrics.weights import (PYTORCH_FID, TORCHSCRIPT, WEIGHTS_ENV, InceptionWeightsMismatch,
                                      InceptionWeightsNotFound, find_inception_weights)

FAKE = b"fake weights"


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """clean-fid's cache location and ours, moved into the test's folder (never the real /tmp, torch hub or
    ~/.cache); the published digests replaced by the fake files' (the real ones are checked below)."""
    folder = tmp_path / "cleanfid-cache"
    folder.mkdir()
    monkeypatch.setattr(weights, "cleanfid_cache_path", lambda file: folder / file.name)
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path / "stylenat-cache"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    fake = hashlib.sha256(FAKE).hexdigest()
    monkeypatch.setattr(weights, "WEIGHTS_FOR_MODE", {mode: dataclasses.replace(file, sha256=fake)
                                                      for mode, file in weights.WEIGHTS_FOR_MODE.items()})
    return folder


def ours(file):
    return weights.weights_cache_dir() / file.name


def put(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(FAKE)
    return folder / name


@pytest.mark.parametrize("mode,file", [("clean", TORCHSCRIPT), ("legacy_tensorflow", TORCHSCRIPT),
                                       ("legacy_pytorch", PYTORCH_FID)])
def test_lookup_order(monkeypatch, tmp_path, cache, mode, file):
    explicit, env = put(tmp_path / "explicit", file.name), put(tmp_path / "env", file.name)
    put(cache, file.name)
    monkeypatch.setenv(WEIGHTS_ENV, str(env.parent))
    assert find_inception_weights(mode, explicit) == explicit          # a file
    assert find_inception_weights(mode, explicit.parent) == explicit   # or its folder
    assert find_inception_weights(mode) == env
    monkeypatch.delenv(WEIGHTS_ENV)
    assert find_inception_weights(mode) == ours(file)                  # clean-fid's copy, copied into ours
    assert ours(file).read_bytes() == FAKE
    (cache / file.name).unlink()
    assert find_inception_weights(mode) == ours(file)                  # ours, without clean-fid's


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
    for needed in (PYTORCH_FID.name, PYTORCH_FID.url, WEIGHTS_ENV, str(ours(PYTORCH_FID)), "unreachable"):
        assert needed in message


def test_downloads_only_when_allowed_and_reachable(monkeypatch, cache):
    fetched = []

    def fake_download(url, dst):
        fetched.append(url)
        with open(dst, "wb") as f:
            f.write(FAKE)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(InceptionWeightsNotFound, match="downloads are disabled"):
        find_inception_weights("clean", allow_download=False)
    assert fetched == []  # offline (the conftest makes every host unreachable)
    with pytest.raises(InceptionWeightsNotFound):
        find_inception_weights("clean")
    assert fetched == []
    monkeypatch.setattr(weights, "network_reachable", lambda url, timeout=3.0: True)
    assert find_inception_weights("clean") == ours(TORCHSCRIPT)  # into our cache, not clean-fid's /tmp
    assert fetched == [TORCHSCRIPT.url] and not (cache / TORCHSCRIPT.name).exists()


def test_unknown_mode():
    with pytest.raises(ValueError, match="legacy_pytorch"):
        find_inception_weights("tensorflow")


def test_cleanfid_cache_locations():
    assert weights.cleanfid_cache_path(TORCHSCRIPT).name == TORCHSCRIPT.name
    assert weights.cleanfid_cache_path(PYTORCH_FID).parent == Path(torch.hub.get_dir()) / "checkpoints"


def test_a_file_that_is_not_the_published_one_is_refused_in_one_line(monkeypatch, tmp_path, cache):
    bad = tmp_path / "given" / TORCHSCRIPT.name
    bad.parent.mkdir()
    bad.write_bytes(b"a TorchScript file someone planted")
    with pytest.raises(InceptionWeightsMismatch) as e:
        find_inception_weights("clean", bad)
    assert str(bad) in str(e.value) and "published" in str(e.value) and "\n" not in str(e.value)
    ours(TORCHSCRIPT).parent.mkdir(parents=True)
    ours(TORCHSCRIPT).write_bytes(b"corrupt")
    with pytest.raises(InceptionWeightsMismatch, match="stylenat-cache"):
        find_inception_weights("clean")


def test_a_bad_copy_in_cleanfids_shared_folder_is_skipped(monkeypatch, cache):
    (cache / TORCHSCRIPT.name).write_bytes(b"planted in /tmp by another user")
    with pytest.warns(UserWarning, match="ignoring clean-fid's copy"), pytest.raises(InceptionWeightsNotFound):
        find_inception_weights("clean")
    assert not ours(TORCHSCRIPT).exists()


def test_a_download_that_is_not_the_published_file_is_not_kept(monkeypatch, cache):
    monkeypatch.setattr(weights, "network_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst: Path(dst).write_bytes(b"tampered"))
    with pytest.raises(InceptionWeightsMismatch):
        find_inception_weights("clean")
    assert not ours(TORCHSCRIPT).exists() and not list(ours(TORCHSCRIPT).parent.iterdir())  # no temp file left


def test_the_real_published_digests():
    """The full SHA-256 of clean-fid's TorchScript file as published for its URL, and the prefix torch hub's
    naming convention puts in pytorch-fid's file name."""
    assert TORCHSCRIPT.sha256 == "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
    assert PYTORCH_FID.name.rsplit("-", 1)[1].removesuffix(".pth") == PYTORCH_FID.sha256


def test_a_stalled_download_gives_up_at_its_total_timeout(monkeypatch, tmp_path):
    release = threading.Event()
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst: release.wait(30))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 0.5 s"):
        weights.download("https://example.invalid/x.pt", tmp_path / "x.pt", timeout=0.5)
    assert time.monotonic() - start < 5
    release.set()
    assert not (tmp_path / "x.pt").exists()


def test_a_hanging_name_lookup_counts_against_the_probe_timeout(monkeypatch):
    release = threading.Event()

    def hanging_lookup(*args, **kwargs):  # a resolver that never answers (socket timeouts do not cover DNS)
        release.wait(30)
        raise socket.gaierror("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    start = time.monotonic()
    assert weights.network_reachable("https://example.invalid/x.pt", timeout=0.5) is False
    assert time.monotonic() - start < 5
    release.set()
