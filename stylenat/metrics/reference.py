"""Reference statistics: clean-fid's named ones, or ours, computed once from a dataset and cached.

**Named** (clean-fid's precomputed Inception statistics: mean and covariance, so FID only, no KID):
``ffhq`` at 256 and 1024 with splits ``trainval`` (50k) and ``trainval70k``; ``lsun_church`` at 256
with ``train`` (50k) and ``trainfull``. :data:`NAMED_STATS` lists them.

clean-fid's file ``<name>_<mode>_<split>_<res>.npz`` is looked for in our cache
(``<cache>/cleanfid/``), then in clean-fid's own ``stats`` folder, and otherwise downloaded from
clean-fid's server into our cache (clean-fid itself would write into its package folder, read-only
in many installs).

**Custom**: computed once per (dataset fingerprint, resolution, mode, extractor) and cached in
``$STYLENAT_CACHE/stats`` (default ``~/.cache/stylenat/stats``) as an ``.npz`` holding the mean, the
covariance and the features (for KID). Files are written to a temporary name and published with
``os.replace``, so a reader never sees half a file; a changed dataset has a new fingerprint and
therefore a new entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stylenat.metrics import weights
from stylenat.metrics.datasets import dataset_features, fingerprint_path
from stylenat.metrics.distance import feature_stats
from stylenat.metrics.distributed import all_ranks_agree, is_local_leader
from stylenat.metrics.extractors import INCEPTION, MODES, FeatureExtractor, check_name, cleanfid_module

NAMED_STATS: dict[str, dict[int, tuple[str, ...]]] = {
    "ffhq": {256: ("trainval", "trainval70k"), 1024: ("trainval", "trainval70k")},
    "lsun_church": {256: ("train", "trainfull")},
}
CLEANFID_STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"
CACHE_ENV = "STYLENAT_CACHE"


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Statistics of the real images, labelled with how they were measured."""

    mu: np.ndarray                 # [D] float64
    sigma: np.ndarray              # [D, D] float64
    features: np.ndarray | None    # [N, D] float32 for KID; None for clean-fid's named statistics
    label: str                     # "ffhq_256_trainval70k" or "dataset-<fingerprint>"
    extractor: str
    mode: str
    resolution: int
    num_images: int | None = None
    source: str | None = None      # the dataset path, when known

    def check_compatible(self, extractor: FeatureExtractor) -> None:
        """Raise unless these statistics were measured with ``extractor``'s network and preprocessing."""
        if (self.extractor, self.mode) != (extractor.name, extractor.mode):
            raise ValueError(f"reference statistics {self.label!r} hold {self.extractor}/{self.mode} features, "
                             f"but the extractor is {extractor.name}/{extractor.mode}")
        if self.mu.shape != (extractor.feature_dim,):
            raise ValueError(f"reference statistics {self.label!r} have dimension {self.mu.shape[0]}, "
                             f"the extractor {extractor.feature_dim}")


def stats_cache_dir() -> Path:
    """``$STYLENAT_CACHE/stats``, default ``~/.cache/stylenat/stats``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "stylenat")).expanduser() / "stats"


def check_named_stats(name: str, resolution: int, split: str) -> None:
    """Raise a ``ValueError`` listing the valid choices unless clean-fid has these named statistics."""
    listing = "; ".join(f"{n} {r}: {', '.join(s)}" for n, by_res in NAMED_STATS.items() for r, s in by_res.items())
    if name not in NAMED_STATS:
        raise ValueError(f"no named reference statistics {name!r}; available: {listing}")
    if resolution not in NAMED_STATS[name]:
        raise ValueError(f"{name} statistics exist at resolutions {sorted(NAMED_STATS[name])}, not {resolution}")
    if split not in NAMED_STATS[name][resolution]:
        raise ValueError(f"{name} {resolution} has splits {', '.join(NAMED_STATS[name][resolution])}, "
                         f"not {split!r}")


def named_reference_stats(name: str, resolution: int, split: str, *, mode: str = "clean",
                          cache_dir: str | Path | None = None, allow_download: bool = True) -> ReferenceStats:
    """clean-fid's precomputed Inception statistics (see the module doc for names and lookup order)."""
    check_named_stats(name, resolution, split)
    if mode not in MODES:
        raise ValueError(f"unknown clean-fid mode {mode!r}; expected one of {MODES}")
    filename = f"{name}_{mode}_{split}_{resolution}.npz"
    ours = Path(cache_dir or stats_cache_dir()) / "cleanfid" / filename
    theirs = Path(cleanfid_module("cleanfid").__file__).parent / "stats" / filename
    path = next((p for p in (ours, theirs) if p.is_file()), None)
    if path is None:
        url = CLEANFID_STATS_URL + filename
        if not (allow_download and weights.network_reachable(url)):
            raise FileNotFoundError(
                f"reference statistics {filename!r} not found and cannot be downloaded "
                f"({'downloads are disabled' if not allow_download else 'no network'}). Get the file from "
                f"{url} and copy it to {ours} (or to clean-fid's folder {theirs.parent}).")
        ours.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(ours))  # writes a temp file, then renames
        path = ours
    with np.load(path) as f:
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    return ReferenceStats(mu, sigma, None, label=f"{name}_{resolution}_{split}", extractor=INCEPTION, mode=mode,
                          resolution=resolution, source=f"clean-fid:{filename}")


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dataset_reference_stats(dataset: Iterable, *, extractor: FeatureExtractor, fingerprint: str, resolution: int,
                            cache_dir: str | Path | None = None, batch_size: int = 64, num_workers: int = 0,
                            max_items: int | None = None, source: str | None = None,
                            verbose: bool = True) -> ReferenceStats:
    """Statistics of ``dataset`` (``[3, resolution, resolution]`` images), from the cache if present.

    Items as for :func:`~stylenat.metrics.datasets.dataset_features`, e.g. the data package's
    ``open_dataset(path, resolution)`` (without ``xflip``) with ``fingerprint_path(path)``. Fold into the
    fingerprint anything else that changes the pixels, such as the resize filter of an on-the-fly resize
    (``f"{fingerprint_path(path)}-lanczos"``).

    ``fingerprint`` identifies the data (see :func:`~stylenat.metrics.datasets.fingerprint_path`); the
    cache key adds the resolution, the extractor's mode and name, and ``max_items`` (the first that
    many images; default all). Under DDP every rank calls this: they agree on a cache hit, otherwise
    all share the work, and one rank per machine writes the file.
    """
    check_name(fingerprint, "dataset fingerprint")
    key = f"{fingerprint}-{resolution}px-{extractor.mode}-{check_name(extractor.name)}"
    key += f"-first{max_items}" if max_items is not None else ""
    path = Path(cache_dir or stats_cache_dir()) / f"{key}.npz"
    label = f"dataset-{fingerprint}" + (f"-first{max_items}" if max_items is not None else "")
    meta = dict(label=label, extractor=extractor.name, mode=extractor.mode, resolution=resolution, source=source)
    if all_ranks_agree(path.is_file()):
        with np.load(path) as f:
            features = f["features"]
            return ReferenceStats(f["mu"], f["sigma"], features, num_images=len(features), **meta)
    features = dataset_features(dataset, extractor, resolution=resolution, batch_size=batch_size,
                                num_workers=num_workers, max_items=max_items, verbose=verbose)
    mu, sigma = feature_stats(features)
    if is_local_leader():
        _save_atomic(path, mu=mu, sigma=sigma, features=features,
                     meta=np.array(json.dumps({**meta, "fingerprint": fingerprint, "num_images": len(features)})))
    return ReferenceStats(mu, sigma, features, num_images=len(features), **meta)


def path_reference_stats(path: str | Path, *, extractor: FeatureExtractor, resolution: int, filter: str = "lanczos",
                         content_fingerprint: bool = False, **kwargs) -> ReferenceStats:
    """:func:`dataset_reference_stats` of a dataset on disk (an image folder, a zip or an LSUN LMDB) or of a
    built-in one (``digits``), read by the data package exactly as training reads it (centre crop,
    ``filter`` resize to ``resolution``; no flips). ``kwargs`` pass through.

    The fingerprint covers file names, sizes and modification times (zip: member CRCs), or file
    contents with ``content_fingerprint=True`` (a built-in dataset: its name), and the resize filter.
    """
    from stylenat.data import open_dataset
    from stylenat.data.factory import dataset_kind

    dataset = open_dataset(path, resolution, xflip=False, filter=filter, center_crop=True)
    # A built-in dataset (``digits``) is fixed by the installed packages: its name is its fingerprint.
    data = f"builtin-{path}" if dataset_kind(path) == "builtin" else fingerprint_path(path, content_fingerprint)
    fingerprint = f"{data}-{filter}"
    return dataset_reference_stats(dataset, extractor=extractor, resolution=resolution, fingerprint=fingerprint,
                                   source=str(path), **kwargs)


def parse_reference_name(ref: str, resolution: int | None = None) -> tuple[str, int, str]:
    """``"ffhq:256:trainval70k"`` -> ``("ffhq", 256, "trainval70k")``, checked against clean-fid's list
    and, when given, against the ``resolution`` of the images to measure."""
    parts = ref.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        raise ValueError(f"reference statistics must be named NAME:RESOLUTION:SPLIT such as ffhq:256:trainval70k, "
                         f"got {ref!r}")
    name, stats_resolution, split = parts[0], int(parts[1]), parts[2]
    check_named_stats(name, stats_resolution, split)
    if resolution is not None and stats_resolution != resolution:
        raise ValueError(f"the images are {resolution}x{resolution}, but the reference statistics {ref!r} are "
                         f"for {stats_resolution}x{stats_resolution}")
    return name, stats_resolution, split


def build_reference(ref: str | None, ref_data: str | os.PathLike | None, *, extractor: FeatureExtractor,
                    resolution: int, batch_size: int = 64, verbose: bool = True) -> ReferenceStats:
    """Reference statistics for images of ``resolution``: clean-fid's named ones (``ref``, Inception only)
    or those of the images in a folder or zip (``ref_data``, computed once and cached). Exactly one of
    the two must be given."""
    if (ref is None) == (ref_data is None):
        raise ValueError("give exactly one of the named reference statistics (ref) and a reference dataset "
                         "(ref_data)")
    if ref_data is not None:
        return path_reference_stats(ref_data, extractor=extractor, resolution=resolution, batch_size=batch_size,
                                    verbose=verbose)
    name, _, split = parse_reference_name(ref, resolution)
    if extractor.name != INCEPTION:
        raise ValueError(f"the named statistics {ref!r} hold Inception features; with the extractor "
                         f"{extractor.name!r} compute statistics from a dataset (ref_data) instead")
    return named_reference_stats(name, resolution, split, mode=extractor.mode)
