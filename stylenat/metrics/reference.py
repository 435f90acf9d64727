"""Reference statistics: clean-fid's named ones, or ours, computed once from a dataset and cached.

**Named** (clean-fid's precomputed Inception statistics: mean and covariance, so FID only, no KID):
``ffhq`` at 256 and 1024 with splits ``trainval`` (50k) and ``trainval70k``; ``lsun_church`` at 256
with ``train`` (50k) and ``trainfull`` (``clean`` mode only). :data:`NAMED_STATS` lists them and
:data:`NAMED_STATS_IMAGES` how many images each covers. clean-fid made its ``ffhq`` 256 statistics from
box-filtered images; ``stylenat prepare`` defaults to Lanczos, about one FID point apart, so a dataset
whose recorded resize filter differs from the statistics' gets a warning (:func:`warn_if_filters_differ`).

clean-fid's file ``<name>_<mode>_<split>_<res>.npz`` is looked for in our cache
(``<cache>/cleanfid/``), then in clean-fid's own ``stats`` folder, and otherwise downloaded from
clean-fid's server into our cache (clean-fid itself would write into its package folder, read-only
in many installs).

**Custom**: computed once per (dataset fingerprint, resolution, mode, extractor name and weights digest,
subset) and cached in ``$STYLENAT_CACHE/stats`` (default ``~/.cache/stylenat/stats``) as an ``.npz`` holding
the mean, the covariance and the features (for KID). A seeded random subset (``subset``, e.g. the
StyleNAT paper's 50k of FFHQ's 70k) is recorded with its seed and the fingerprint of its index list.
Files are written to a temporary name and published with ``os.replace``, so a reader never sees half a
file; a changed dataset has a new fingerprint and therefore a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from stylenat.files import atomic_write
from stylenat.metrics import weights
from stylenat.metrics.datasets import dataset_features, fingerprint_path
from stylenat.metrics.distance import feature_stats
from stylenat.metrics.distributed import all_ranks_agree, is_local_leader
from stylenat.metrics.extractors import (INCEPTION, MODES, FeatureExtractor, check_name, cleanfid_module,
                                         extractor_digest)

NAMED_STATS: dict[str, dict[int, tuple[str, ...]]] = {
    "ffhq": {256: ("trainval", "trainval70k"), 1024: ("trainval", "trainval70k")},
    "lsun_church": {256: ("train", "trainfull")},
}
NAMED_STATS_IMAGES: dict[str, int] = {"trainval": 50_000, "trainval70k": 70_000, "train": 50_000,
                                      "trainfull": 126_227}  # by split; lsun_church trainfull: all its train images
FULL_SPLITS = ("trainval70k", "trainfull")  # the whole dataset (fid50k_full); the others are 50k subsets
CLEAN_ONLY_STATS = {("lsun_church", 256, "trainfull")}  # clean-fid publishes no legacy-mode file for these
NAMED_STATS_FILTER = {("ffhq", 256): "box"}  # the resize filter of the images behind the named statistics
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
    covers_dataset: bool = False   # all images of the source (fid50k_full), not a subset (fid50k)
    subset: dict | None = None     # a random subset: {"size", "seed", "fingerprint"} (of its index list)
    resize_filter: str | None = None  # how the images were downsampled, when known ("box", "lanczos", ...)

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


def check_named_stats(name: str, resolution: int, split: str, mode: str | None = None) -> None:
    """Raise a ``ValueError`` listing the valid choices unless clean-fid has these named statistics (in
    ``mode``, when given)."""
    listing = "; ".join(f"{n} {r}: {', '.join(s)}" for n, by_res in NAMED_STATS.items() for r, s in by_res.items())
    if name not in NAMED_STATS:
        raise ValueError(f"no named reference statistics {name!r}; available: {listing}")
    if resolution not in NAMED_STATS[name]:
        raise ValueError(f"{name} statistics exist at resolutions {sorted(NAMED_STATS[name])}, not {resolution}")
    if split not in NAMED_STATS[name][resolution]:
        raise ValueError(f"{name} {resolution} has splits {', '.join(NAMED_STATS[name][resolution])}, "
                         f"not {split!r}")
    if mode is not None and mode != "clean" and (name, resolution, split) in CLEAN_ONLY_STATS:
        raise ValueError(f"clean-fid publishes {name}:{resolution}:{split} statistics in clean mode only, not "
                         f"{mode}; use mode clean or another split")


def named_reference_stats(name: str, resolution: int, split: str, *, mode: str = "clean",
                          cache_dir: str | Path | None = None, allow_download: bool = True) -> ReferenceStats:
    """clean-fid's precomputed Inception statistics (see the module doc for names and lookup order)."""
    if mode not in MODES:
        raise ValueError(f"unknown clean-fid mode {mode!r}; expected one of {MODES}")
    check_named_stats(name, resolution, split, mode)
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
        weights.download(url, ours)  # bounded in time, published by an atomic rename
        path = ours
    with np.load(path) as f:
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    return ReferenceStats(mu, sigma, None, label=f"{name}_{resolution}_{split}", extractor=INCEPTION, mode=mode,
                          resolution=resolution, num_images=NAMED_STATS_IMAGES[split], source=f"clean-fid:{filename}",
                          covers_dataset=split in FULL_SPLITS, resize_filter=NAMED_STATS_FILTER.get((name, resolution)))


def random_subset(num_items: int, size: int, seed: int) -> tuple[np.ndarray, str]:
    """``size`` distinct indices of ``range(num_items)`` drawn with ``seed`` (sorted) and 16 hex digits that
    fingerprint the list."""
    if not 1 <= size <= num_items:
        raise ValueError(f"a random subset of {size} reference images needs a dataset of at least that many; "
                         f"this one has {num_items}")
    indices = np.sort(np.random.default_rng(seed).choice(num_items, size, replace=False)).astype(np.int64)
    return indices, hashlib.sha256(indices.tobytes()).hexdigest()[:16]


def dataset_reference_stats(dataset: Iterable, *, extractor: FeatureExtractor, fingerprint: str, resolution: int,
                            cache_dir: str | Path | None = None, batch_size: int = 64, num_workers: int = 0,
                            max_items: int | None = None, subset: int | None = None, subset_seed: int = 0,
                            source: str | None = None, resize_filter: str | None = None,
                            verbose: bool = True) -> ReferenceStats:
    """Statistics of ``dataset`` (``[3, resolution, resolution]`` images), from the cache if present.

    Items as for :func:`~stylenat.metrics.datasets.dataset_features`, e.g. the data package's
    ``open_dataset(path, resolution)`` (without ``xflip``) with ``fingerprint_path(path)``. Fold into the
    fingerprint anything else that changes the pixels, such as the resize filter of an on-the-fly resize
    (``f"{fingerprint_path(path)}-lanczos"``).

    ``fingerprint`` identifies the data (see :func:`~stylenat.metrics.datasets.fingerprint_path`); the
    cache key adds the resolution, the extractor's mode, name and weights digest (an extractor without a
    ``network`` module is never cached: its weights could change under the same name), and either ``max_items``
    (the first that many images) or ``subset`` (that many images drawn at random with ``subset_seed``, from a
    map-style dataset); default all. ``resize_filter`` is recorded. Under DDP every rank calls this: they
    agree on a cache hit, otherwise all share the work, and one rank per machine writes the file.
    """
    check_name(fingerprint, "dataset fingerprint")
    if max_items is not None and subset is not None:
        raise ValueError("give max_items (the first images) or subset (a random choice), not both")
    subset_info = None
    if subset is not None:
        if not isinstance(dataset, Sized):
            raise ValueError("a random reference subset needs a dataset with a length (map-style)")
        indices, subset_fingerprint = random_subset(len(dataset), subset, subset_seed)
        dataset = Subset(dataset, indices.tolist())
        subset_info = {"size": subset, "seed": subset_seed, "fingerprint": subset_fingerprint}
    which = (f"-first{max_items}" if max_items is not None else "") + \
        (f"-random{subset}s{subset_seed}-{subset_info['fingerprint']}" if subset_info else "")
    digest = extractor_digest(extractor)  # None: weights unknown, so neither read nor write the cache
    key = f"{fingerprint}-{resolution}px-{extractor.mode}-{check_name(extractor.name)}-{digest}"
    path = Path(cache_dir or stats_cache_dir()) / f"{key}{which}.npz"
    meta = dict(label=f"dataset-{fingerprint}{which}", extractor=extractor.name, mode=extractor.mode,
                resolution=resolution, source=source, covers_dataset=max_items is None and subset is None,
                subset=subset_info, resize_filter=resize_filter)
    if all_ranks_agree(digest is not None and path.is_file()):
        with np.load(path) as f:
            features = f["features"]
            return ReferenceStats(f["mu"], f["sigma"], features, num_images=len(features), **meta)
    features = dataset_features(dataset, extractor, resolution=resolution, batch_size=batch_size,
                                num_workers=num_workers, max_items=max_items, verbose=verbose)
    mu, sigma = feature_stats(features)
    if digest is not None and is_local_leader():
        with atomic_write(path) as f:
            np.savez(f, mu=mu, sigma=sigma, features=features,
                     meta=np.array(json.dumps({**meta, "fingerprint": fingerprint, "num_images": len(features)})))
    return ReferenceStats(mu, sigma, features, num_images=len(features), **meta)


def path_reference_stats(path: str | Path, *, extractor: FeatureExtractor, resolution: int, filter: str = "lanczos",
                         content_fingerprint: bool = False, **kwargs) -> ReferenceStats:
    """:func:`dataset_reference_stats` of a dataset on disk (an image folder, a zip or an LSUN LMDB) or of a
    built-in one (``digits``), read by the data package exactly as training reads it (centre crop,
    ``filter`` resize to ``resolution``; no flips). ``kwargs`` pass through.

    The fingerprint covers file names, sizes and modification times (zip: member CRCs), or file
    contents with ``content_fingerprint=True`` (a built-in dataset: its name), and the resize filter.
    The statistics record the resize filter a ``stylenat prepare`` zip was made with (else none).
    """
    from stylenat.data import open_dataset
    from stylenat.data.factory import dataset_kind
    from stylenat.data.prepare import prepared_filter

    dataset = open_dataset(path, resolution, xflip=False, filter=filter, center_crop=True)
    # A built-in dataset (``digits``) is fixed by the installed packages: its name is its fingerprint.
    data = f"builtin-{path}" if dataset_kind(path) == "builtin" else fingerprint_path(path, content_fingerprint)
    fingerprint = f"{data}-{filter}"
    return dataset_reference_stats(dataset, extractor=extractor, resolution=resolution, fingerprint=fingerprint,
                                   source=str(path), resize_filter=prepared_filter(path), **kwargs)


def warn_if_filters_differ(data_filter: str | None, reference: ReferenceStats, data: str = "the training data") -> bool:
    """Warn (and return True) when ``data_filter`` and the reference statistics' resize filter are both known
    and differ: FID then measures the resize filter as well as the generator (about one point on FFHQ-256)."""
    if data_filter is None or reference.resize_filter is None or data_filter == reference.resize_filter:
        return False
    warnings.warn(f"{data} was resized with the {data_filter!r} filter but the reference statistics "
                  f"{reference.label!r} come from {reference.resize_filter!r}-resized images: FID will include "
                  f"the filter difference (about one point on FFHQ-256). Prepare the data with --filter "
                  f"{reference.resize_filter}, or compute the reference statistics from the data itself.",
                  stacklevel=2)
    return True


def parse_reference_name(ref: str, resolution: int | None = None, mode: str | None = None) -> tuple[str, int, str]:
    """``"ffhq:256:trainval70k"`` -> ``("ffhq", 256, "trainval70k")``, checked against clean-fid's list
    (in ``mode``, when given) and, when given, against the ``resolution`` of the images to measure."""
    parts = ref.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        raise ValueError(f"reference statistics must be named NAME:RESOLUTION:SPLIT such as ffhq:256:trainval70k, "
                         f"got {ref!r}")
    name, stats_resolution, split = parts[0], int(parts[1]), parts[2]
    check_named_stats(name, stats_resolution, split, mode)
    if resolution is not None and stats_resolution != resolution:
        raise ValueError(f"the images are {resolution}x{resolution}, but the reference statistics {ref!r} are "
                         f"for {stats_resolution}x{stats_resolution}")
    return name, stats_resolution, split


def build_reference(ref: str | None, ref_data: str | os.PathLike | None, *, extractor: FeatureExtractor,
                    resolution: int, batch_size: int = 64, ref_subset: int | None = None, ref_subset_seed: int = 0,
                    verbose: bool = True) -> ReferenceStats:
    """Reference statistics for images of ``resolution``: clean-fid's named ones (``ref``, Inception only)
    or those of the images in a folder or zip (``ref_data``, computed once and cached; all of them, or a
    random ``ref_subset`` of them drawn with ``ref_subset_seed``). Exactly one of ``ref`` and ``ref_data``."""
    if (ref is None) == (ref_data is None):
        raise ValueError("give exactly one of the named reference statistics (ref) and a reference dataset "
                         "(ref_data)")
    if ref_data is not None:
        return path_reference_stats(ref_data, extractor=extractor, resolution=resolution, batch_size=batch_size,
                                    subset=ref_subset, subset_seed=ref_subset_seed, verbose=verbose)
    if ref_subset is not None:
        raise ValueError(f"a random reference subset needs a reference dataset (ref_data), not the named "
                         f"statistics {ref!r}")
    name, _, split = parse_reference_name(ref, resolution, extractor.mode)
    if extractor.name != INCEPTION:
        raise ValueError(f"the named statistics {ref!r} hold Inception features; with the extractor "
                         f"{extractor.name!r} compute statistics from a dataset (ref_data) instead")
    return named_reference_stats(name, resolution, split, mode=extractor.mode)
