"""Readability: the share of samples a classifier is sure of (>= 0.9), next to the reals' share, and the class
histogram; computed independently here (numpy) and recorded beside the Fréchet distance."""

import json

import numpy as np
import pytest
import torch
from metrics_helpers import Z_DIM, TinyClassifier, TinyGenerator, random_images, tiny_extractor, write_pngs

from stylenat.metrics import (ReferenceStats, evaluate_generator, generator_features, metric_name,
                              path_reference_stats)
from stylenat.metrics.readability import readability, readability_values


def numpy_readability(probabilities, threshold=0.9):
    """The definition, written out: share of rows with max >= threshold, share of rows per argmax class."""
    p = np.asarray(probabilities, dtype=np.float64)
    shares = [float(np.mean(p.argmax(1) == c)) for c in range(p.shape[1])]
    return float(np.mean(p.max(1) >= threshold)), shares


def test_readability_matches_the_definition():
    probabilities = torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0], [0.1, 0.89, 0.01]])
    share, shares = readability(probabilities)
    assert share == 0.5  # exactly 0.9 counts; 0.89 does not
    assert shares == [0.5, 0.25, 0.25]  # class 1 is the most likely for one row though unsure
    random = (torch.rand(500, 10, generator=torch.Generator().manual_seed(0)) * 6).softmax(1)
    share, shares = readability(random, 0.5)
    assert 0.05 < share < 0.95 and (share, shares) == numpy_readability(random, 0.5)
    with pytest.raises(ValueError, match=r"class probabilities \[N, C\] with N >= 1, got \(0, 10\)"):
        readability(torch.empty(0, 10))


def test_readability_values_against_the_reference():
    classifier = TinyClassifier()
    real = classifier(torch.from_numpy(random_images(64, seed=0)).permute(0, 3, 1, 2)).numpy()
    fake = classifier(torch.from_numpy(random_images(32, seed=1)).permute(0, 3, 1, 2)).numpy()
    values = readability_values(fake, real, classifier)
    expected, expected_shares = numpy_readability(classifier.class_probabilities(fake))
    expected_real, expected_real_shares = numpy_readability(classifier.class_probabilities(real))
    assert 0 < expected_real < 1 and 0 < expected < 1  # the tiny head is sure of some images, not all
    assert values == dict(value=expected, class_shares=expected_shares, reference_value=expected_real,
                          reference_class_shares=expected_real_shares, relative=expected / expected_real, threshold=0.9)
    json.dumps(values, allow_nan=False)  # plain JSON types


def test_generator_records_readability_beside_the_distance(tmp_path):
    classifier, gen = TinyClassifier(), TinyGenerator()
    real = write_pngs(tmp_path / "real", random_images(40, seed=0))
    reference = path_reference_stats(real, extractor=classifier, resolution=16, batch_size=16, verbose=False)
    records = evaluate_generator(gen, reference, extractor=classifier, num_samples=24, seed=3, z_dim=Z_DIM,
                                 batch_size=8, readable=True, cur_nimg=2000, run_dir=tmp_path, verbose=False)
    fd, readable = records
    assert fd["metric"] == "fd_tiny24" and readable["metric"] == "readable_tiny24" == metric_name("readable", "tiny", 24)
    on_disk = json.loads((tmp_path / "metric-readable_tiny24.jsonl").read_text())
    assert on_disk == readable and readable["kimg"] == 2.0 and readable["seed"] == 3 and readable["num_samples"] == 24
    samples = generator_features(gen, classifier, num_samples=24, seed=3, z_dim=Z_DIM, batch_size=8, verbose=False)
    share, shares = numpy_readability(classifier.class_probabilities(samples))
    real_share, _ = numpy_readability(classifier.class_probabilities(reference.features))
    assert (readable["value"], readable["class_shares"], readable["reference_value"]) == (share, shares, real_share)


def test_readability_needs_a_classifier_and_reference_features(tmp_path):
    real = write_pngs(tmp_path / "real", random_images(8, seed=0))
    plain = tiny_extractor()
    reference = path_reference_stats(real, extractor=plain, resolution=16, batch_size=8, verbose=False)
    with pytest.raises(ValueError, match="readability needs an extractor that classifies .* got 'tiny'"):
        evaluate_generator(TinyGenerator(), reference, extractor=plain, num_samples=4, z_dim=Z_DIM, readable=True)
    named = ReferenceStats(reference.mu, reference.sigma, None, label="named", extractor="tiny", mode="clean",
                           resolution=16)
    with pytest.raises(ValueError, match="readability needs the reference features"):
        evaluate_generator(TinyGenerator(), named, extractor=TinyClassifier(), num_samples=4, z_dim=Z_DIM,
                           readable=True)
