"""Readability: how often a classifier is sure what a sample shows, next to how often it is sure of real images.

A sample is *readable* when the classifier gives one class a probability of at least ``threshold`` (0.9).
Even a sharp classifier is not that sure of every real image, so the samples' readable share is read
against the reference images' own share (their ratio is recorded); the class histogram — the share of
samples whose most likely class is each class — shows mode collapse, which a good readable share can hide.

The extractor must also classify: a :class:`Classifier` (its features ``[N, D]`` -> class probabilities
``[N, C]``), such as :class:`stylenat.training.nat_digits.ClassifierFeatures`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

READABLE_THRESHOLD = 0.9


@runtime_checkable
class Classifier(Protocol):
    """A feature extractor whose features also give class probabilities."""

    def class_probabilities(self, features: np.ndarray | Tensor) -> Tensor:
        """Features ``[N, D]`` (the extractor's own output) -> probabilities ``[N, C]`` (rows sum to 1)."""
        ...


def readability(probabilities: Tensor, threshold: float = READABLE_THRESHOLD) -> tuple[float, list[float]]:
    """Class probabilities ``[N, C]`` -> (share of rows whose largest probability is ``>= threshold``,
    per-class share ``[C]`` of rows whose most likely class it is).

    >>> readability(torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9]]))
    (0.6666666666666666, [0.6666666666666666, 0.3333333333333333])
    """
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"readability needs class probabilities [N, C] with N >= 1, got {tuple(probabilities.shape)}")
    confidence, label = probabilities.max(dim=1)
    counts = torch.bincount(label, minlength=probabilities.shape[1])
    n = len(probabilities)
    return (confidence >= threshold).sum().item() / n, (counts.double() / n).tolist()


def check_classifier(extractor: object) -> Classifier:
    """``extractor`` itself when it classifies; else a one-line ``ValueError`` naming it."""
    if not isinstance(extractor, Classifier):
        raise ValueError(f"readability needs an extractor that classifies (a class_probabilities method), got "
                         f"{getattr(extractor, 'name', type(extractor).__name__)!r}: use a classifier extractor such "
                         "as stylenat.training.nat_digits:nat_digits_extractor")
    return extractor


def readability_values(features: np.ndarray, reference_features: np.ndarray, classifier: Classifier,
                       threshold: float = READABLE_THRESHOLD) -> dict:
    """The readability of ``features`` ``[N, D]`` against that of ``reference_features`` ``[M, D]``: ``value``
    (the samples' readable share), ``class_shares`` ``[C]``, ``reference_value``, ``reference_class_shares``,
    ``relative`` (value / reference_value) and ``threshold``, plain JSON types."""
    with torch.no_grad():
        value, shares = readability(classifier.class_probabilities(features), threshold)
        reference_value, reference_shares = readability(classifier.class_probabilities(reference_features),
                                                        threshold)
    return dict(value=value, class_shares=shares, reference_value=reference_value,
                reference_class_shares=reference_shares,
                relative=value / reference_value if reference_value > 0 else None, threshold=float(threshold))
