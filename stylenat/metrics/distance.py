"""Fréchet distance and kernel distance (KID) between two sets of features.

Both work on float arrays of features ``[N, D]`` and know nothing about the network that produced
them; :mod:`stylenat.metrics.extractors` decides what the numbers may be called ("FID" only for the
Inception protocol).
"""

from __future__ import annotations

import numpy as np


def _features(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be a float array [N, D], got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or Inf")
    return x


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]``, in float64, of ``features`` ``[N, D]`` (N >= 2)."""
    feats = _features(features, "features").astype(np.float64)
    if len(feats) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(feats)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; rounding's small negative eigenvalues count as 0."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); means ``[D]``, covariances ``[D, D]``.

    ``d² = |mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)``.

    ``sigma1 sigma2`` is not symmetric, which is why ``scipy.linalg.sqrtm`` of it can return complex
    values or fail when the product is near singular (fewer samples than dimensions). It is similar
    to the symmetric PSD matrix ``s sigma2 s`` with ``s = sqrt(sigma1)``, so the trace term is the sum
    of square roots of that matrix's eigenvalues: two symmetric eigendecompositions in float64, real
    throughout. A result that rounding makes slightly negative is returned as 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"expected means [D] and covariances [D, D] of one D; got mu1 {mu1.shape}, "
                         f"sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or Inf")
    s = _psd_sqrt((sigma1 + sigma1.T) / 2)
    m = s @ sigma2 @ s
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt), 0.0)


def kernel_distance(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                    max_subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel distance (KID): the unbiased estimate of MMD² with the kernel ``k(x, y) = (x·y / D + 1)³``.

    ``features1`` ``[N1, D]`` and ``features2`` ``[N2, D]``. Averaged over ``num_subsets`` pairs of
    subsets of ``m = min(N1, N2, max_subset_size)`` rows each, drawn without replacement from a
    generator seeded with ``seed`` (StyleGAN's and clean-fid's protocol, made reproducible). Per pair:
    ``sum_{i≠j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m²``.
    """
    f1, f2 = _features(features1, "features1"), _features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dims differ: {f1.shape} vs {f2.shape}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    d, m = f1.shape[1], min(len(f1), len(f2), max_subset_size)
    if m < 2:
        raise ValueError(f"need at least 2 feature vectors on each side, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (np.asarray(x @ x.T, np.float64) / d + 1) ** 3
        kyy = (np.asarray(y @ y.T, np.float64) / d + 1) ** 3
        kxy = (np.asarray(x @ y.T, np.float64) / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2.0 * kxy.sum() / (m * m)
    return float(total / num_subsets)
