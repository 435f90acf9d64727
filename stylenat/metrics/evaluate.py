"""FD / KD of a generator (or of given features) against reference statistics, with the full protocol.

This is what the training callback and ``stylenat fid`` call. Each metric comes back as a record (a
dict) that states how it was measured; with ``run_dir`` rank 0 also appends it to
``metric-<metric>.jsonl``. Example record::

    {"metric": "fid50k_full", "value": 4.21, "extractor": "inception_v3", "mode": "clean", "protocol": null,
     "reference": "ffhq_256_trainval70k", "reference_source": "clean-fid:ffhq_clean_trainval70k_256.npz",
     "reference_images": 70000, "reference_subset": null, "num_samples": 50000, "seed": 0, "truncation": 1.0,
     "checkpoint": "run/last.ckpt", "cur_nimg": 25000000, "kimg": 25000.0, "world_size": 8,
     "run_id": "3f2a9c01b7e4", "wall_time_s": 412.8, "timestamp": 1767225600.0}

The name ends in ``_full`` (FID/KID only) when the reference covers its whole dataset; a random reference
subset is recorded as ``{"size", "seed", "fingerprint"}``. ``protocol`` names a fixed protocol such as
``stylenat-paper`` (:mod:`stylenat.metrics.protocols`). KID records add ``kid_subsets`` and
``kid_subset_size`` (subsets drawn with seed 0). Readability records (``readable=True``,
:mod:`stylenat.metrics.readability`) hold the samples' readable share as ``value`` and add ``class_shares``,
``reference_value``, ``reference_class_shares``, ``relative`` and ``threshold``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from stylenat.metrics.distance import feature_stats, frechet_distance, kernel_distance
from stylenat.metrics.distributed import rank_and_world
from stylenat.metrics.extractors import FeatureExtractor, metric_name
from stylenat.metrics.readability import READABLE_THRESHOLD, check_classifier, readability_values
from stylenat.metrics.records import append_metric_record, new_run_id
from stylenat.metrics.reference import ReferenceStats
from stylenat.metrics.samples import GeneratorFn, generator_features


def _check_options(reference: ReferenceStats, extractor: FeatureExtractor, kid: bool, readable: bool) -> None:
    for wanted, what in ((kid, "KID"), (readable, "readability")):
        if wanted and reference.features is None:
            raise ValueError(f"{what} needs the reference features, and {reference.label!r} holds only a mean and "
                             "covariance (clean-fid's named statistics are FID-only): leave it off, or use "
                             "statistics computed from the dataset")
    if readable:
        check_classifier(extractor)


def evaluate_features(features: np.ndarray, reference: ReferenceStats, *, extractor: FeatureExtractor,
                      kid: bool = False, kid_subsets: int = 100, kid_subset_size: int = 1000,
                      readable: bool = False, readable_threshold: float = READABLE_THRESHOLD,
                      seed: int | None = None, truncation: float | None = None,
                      checkpoint: str | os.PathLike | None = None, cur_nimg: int | None = None,
                      start_time: float | None = None, run_dir: str | os.PathLike | None = None,
                      protocol: str | None = None, run_id: str | None = None) -> list[dict]:
    """Records for the Fréchet distance (and KID if ``kid``, readability if ``readable``) of ``features``
    ``[N, D]`` to ``reference``.

    ``seed``, ``truncation``, ``checkpoint``, ``cur_nimg`` and ``run_id`` (default: a fresh one) describe
    where the features came from and are recorded as given; ``start_time`` (``time.time()`` when the
    evaluation began, default now) sets the recorded wall time.
    """
    start_time = time.time() if start_time is None else start_time
    reference.check_compatible(extractor)
    _check_options(reference, extractor, kid, readable)
    mu, sigma = feature_stats(features)
    values = {"fd": frechet_distance(mu, sigma, reference.mu, reference.sigma)}
    if kid:
        values["kd"] = kernel_distance(reference.features, features, kid_subsets, kid_subset_size)
    if readable:
        values["readable"] = readability_values(features, reference.features, extractor, readable_threshold)
    rank, world = rank_and_world()
    cur_nimg = None if cur_nimg is None else int(cur_nimg)  # plain JSON types, whatever the caller holds
    common = dict(extractor=extractor.name, mode=extractor.mode, protocol=protocol, reference=reference.label,
                  reference_source=reference.source, reference_images=reference.num_images,
                  reference_subset=reference.subset, num_samples=len(features),
                  seed=None if seed is None else int(seed),
                  truncation=None if truncation is None else float(truncation),
                  checkpoint=None if checkpoint is None else str(checkpoint), cur_nimg=cur_nimg,
                  kimg=None if cur_nimg is None else cur_nimg / 1000, world_size=world,
                  run_id=run_id or new_run_id(), wall_time_s=round(time.time() - start_time, 3), timestamp=time.time())
    records = []
    for kind, value in values.items():
        name = metric_name(kind, extractor.name, len(features), reference.covers_dataset)
        fields = value if kind == "readable" else {"value": value}  # readability: the value and its context
        record = {"metric": name, **fields, **common}
        if kind == "kd":
            record.update(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size)
        records.append(record)
        if run_dir is not None and rank == 0:
            append_metric_record(Path(run_dir), record)
    return records


def evaluate_generator(generator: GeneratorFn, reference: ReferenceStats, *, extractor: FeatureExtractor,
                       num_samples: int = 50_000, seed: int = 0, z_dim: int = 512, batch_size: int = 32,
                       device: str | torch.device = "cpu", truncation: float = 1.0, kid: bool = False,
                       kid_subsets: int = 100, kid_subset_size: int = 1000, readable: bool = False,
                       readable_threshold: float = READABLE_THRESHOLD,
                       checkpoint: str | os.PathLike | None = None, cur_nimg: int | None = None,
                       run_dir: str | os.PathLike | None = None, protocol: str | None = None,
                       run_id: str | None = None, verbose: bool = True) -> list[dict]:
    """Sample ``num_samples`` images (seeds ``seed + i``) and evaluate them against ``reference``.

    ``generator`` maps ``z`` ``[B, z_dim]`` to images in [-1, 1] with ``truncation`` already applied
    (the value is recorded, not applied here); it runs in strict float32 (TF32 off, see
    :func:`~stylenat.metrics.samples.generator_features`). Under DDP every rank calls this with the same
    arguments; the samples are shared out, every rank gets the records, rank 0 writes them.
    """
    start_time = time.time()
    reference.check_compatible(extractor)  # fail before spending the sampling time
    _check_options(reference, extractor, kid, readable)
    features = generator_features(generator, extractor, num_samples=num_samples, seed=seed, z_dim=z_dim,
                                  batch_size=batch_size, device=device, resolution=reference.resolution,
                                  verbose=verbose)
    return evaluate_features(features, reference, extractor=extractor, kid=kid, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, readable=readable,
                             readable_threshold=readable_threshold, seed=seed, truncation=truncation,
                             checkpoint=checkpoint, cur_nimg=cur_nimg, start_time=start_time, run_dir=run_dir,
                             protocol=protocol, run_id=run_id)
