"""Image-generation metrics: Fréchet distance and KID over pluggable feature extractors.

- :mod:`.distance` — ``frechet_distance``, ``kernel_distance`` (KID), ``feature_stats`` on ``[N, D]``
  feature arrays;
- :mod:`.extractors` — the ``FeatureExtractor`` protocol, clean-fid's preprocessing
  (``CleanFIDExtractor``) and clean-fid's Inception (``inception_extractor``), metric naming (the
  words FID / KID only for the Inception protocol);
- :mod:`.weights` — offline-first lookup of the Inception weights;
- :mod:`.reference` — clean-fid's named statistics and our cached dataset statistics;
- :mod:`.samples` / :mod:`.datasets` — seeded generator samples and dataset images to features,
  sharded over DDP ranks; :mod:`.distributed` holds the sharding and gathering;
- :mod:`.evaluate` / :mod:`.records` — metrics with their full protocol, appended to
  ``metric-<name>.jsonl``.
"""

from stylenat.metrics.datasets import ImageFiles, dataset_features, fingerprint_path
from stylenat.metrics.distance import feature_stats, frechet_distance, kernel_distance
from stylenat.metrics.evaluate import evaluate_features, evaluate_generator
from stylenat.metrics.extractors import (INCEPTION, MODES, CleanFIDExtractor, FeatureExtractor, build_extractor,
                                         inception_extractor, metric_name)
from stylenat.metrics.records import append_metric_record
from stylenat.metrics.reference import (NAMED_STATS, ReferenceStats, build_reference, dataset_reference_stats,
                                        named_reference_stats, parse_reference_name, path_reference_stats,
                                        stats_cache_dir)
from stylenat.metrics.samples import GeneratorFn, generator_features, to_uint8, z_from_seeds
from stylenat.metrics.weights import WEIGHTS_ENV, InceptionWeightsNotFound, find_inception_weights

__all__ = [
    "INCEPTION", "MODES", "NAMED_STATS", "WEIGHTS_ENV",
    "CleanFIDExtractor", "FeatureExtractor", "GeneratorFn", "ImageFiles", "InceptionWeightsNotFound", "ReferenceStats",
    "append_metric_record", "build_extractor", "build_reference", "dataset_features", "dataset_reference_stats", "evaluate_features",
    "evaluate_generator", "feature_stats", "find_inception_weights", "fingerprint_path", "frechet_distance",
    "generator_features", "inception_extractor", "kernel_distance", "metric_name", "named_reference_stats",
    "parse_reference_name", "path_reference_stats", "stats_cache_dir", "to_uint8", "z_from_seeds",
]
