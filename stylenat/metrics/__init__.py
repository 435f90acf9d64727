"""Image-generation metrics: Fréchet distance and KID over pluggable feature extractors.

- :mod:`.distance` — ``frechet_distance``, ``kernel_distance`` (KID), ``feature_stats`` on ``[N, D]``
  feature arrays;
- :mod:`.extractors` — the ``FeatureExtractor`` protocol, clean-fid's preprocessing
  (``CleanFIDExtractor``) and clean-fid's Inception (``inception_extractor``), metric naming (the
  words FID / KID only for the Inception protocol);
- :mod:`.weights` — offline-first lookup of the Inception weights;
- :mod:`.reference` — clean-fid's named statistics and our cached dataset statistics (all images or a
  seeded random subset), with the resize-filter check;
- :mod:`.protocols` — fixed protocols such as ``stylenat-paper`` (the paper's FID) and their settings;
- :mod:`.samples` / :mod:`.datasets` — seeded generator samples and dataset images to features,
  sharded over DDP ranks; :mod:`.distributed` holds the sharding and gathering;
- :mod:`.evaluate` / :mod:`.records` — metrics with their full protocol, appended to
  ``metric-<name>.jsonl``.
"""

from stylenat.metrics.datasets import ImageFiles, dataset_features, fingerprint_path
from stylenat.metrics.distance import feature_stats, frechet_distance, kernel_distance
from stylenat.metrics.evaluate import evaluate_features, evaluate_generator
from stylenat.metrics.extractors import (INCEPTION, MODES, CleanFIDExtractor, FeatureExtractor, build_extractor,
                                         extractor_digest, inception_extractor, metric_name)
from stylenat.metrics.protocols import PROTOCOLS, Protocol, Settings, resolve_protocol
from stylenat.metrics.records import append_metric_record, new_run_id, read_metric_records
from stylenat.metrics.reference import (NAMED_STATS, ReferenceStats, build_reference, dataset_reference_stats,
                                        named_reference_stats, parse_reference_name, path_reference_stats,
                                        stats_cache_dir, warn_if_filters_differ)
from stylenat.metrics.samples import GeneratorFn, generator_features, strict_float32, to_uint8, z_from_seeds
from stylenat.metrics.weights import WEIGHTS_ENV, InceptionWeightsNotFound, find_inception_weights

__all__ = [
    "INCEPTION", "MODES", "NAMED_STATS", "PROTOCOLS", "WEIGHTS_ENV",
    "CleanFIDExtractor", "FeatureExtractor", "GeneratorFn", "ImageFiles", "InceptionWeightsNotFound", "Protocol",
    "ReferenceStats", "Settings",
    "append_metric_record", "build_extractor", "build_reference", "dataset_features", "dataset_reference_stats", "evaluate_features",
    "evaluate_generator", "extractor_digest", "feature_stats", "find_inception_weights", "fingerprint_path",
    "frechet_distance", "generator_features", "inception_extractor", "kernel_distance", "metric_name",
    "named_reference_stats", "new_run_id", "parse_reference_name", "path_reference_stats", "read_metric_records",
    "resolve_protocol", "stats_cache_dir", "strict_float32", "to_uint8", "warn_if_filters_differ", "z_from_seeds",
]
