"""Fréchet distance against closed forms and scipy; KID against a direct pairwise implementation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg

from stylenat.metrics import feature_stats, frechet_distance, kernel_distance


def random_spd(d, rng, floor=0.1):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + floor * np.eye(d)


def scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy's sqrtm, written independently of ours."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_commuting_gaussians_closed_form():
    # Same eigenvectors: d² = |mu1 - mu2|² + sum_i (sqrt(a_i) - sqrt(b_i))².
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_one_dimensional_closed_form():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(2.0**2 + (2.0 - 3.0) ** 2)


@pytest.mark.parametrize("d", [8, 64])
def test_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-8)


def test_sampled_gaussians_approach_the_population_value():
    rng = np.random.default_rng(1)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = np.diag([1.0, 2.0, 0.5, 1.0]), np.diag([1.5, 1.0, 0.5, 2.0])
    x = rng.multivariate_normal(mu1, s1, 200_000)
    y = rng.multivariate_normal(mu2, s2, 200_000)
    population = scipy_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(*feature_stats(x), *feature_stats(y)) == pytest.approx(population, abs=0.02)


def test_distance_to_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(2)
    for n, d in ((500, 16), (10, 64)):  # the second covariance has rank 9 < 64
        stats = feature_stats(rng.standard_normal((n, d)).astype(np.float32))
        assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-8)


def test_grows_with_a_mean_shift():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 16))
    mu, sigma = feature_stats(x)
    values = [frechet_distance(mu, sigma, *feature_stats(x + t)) for t in (0.0, 0.1, 0.5, 1.0, 2.0)]
    assert values == pytest.approx([16 * t**2 for t in (0.0, 0.1, 0.5, 1.0, 2.0)], abs=1e-8)
    assert all(a < b for a, b in zip(values, values[1:]))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 10))
def test_symmetric_and_non_negative(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(d, rng, 1e-3), random_spd(d, rng, 1e-3)
    ab, ba = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert ab >= 0
    assert ab == pytest.approx(ba, rel=1e-7, abs=1e-9)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0], [0, np.nan]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"float array \[N, D\]"):
        feature_stats(np.zeros(5))


def direct_unbiased_mmd2(x, y):
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³, pair by pair (Gretton et al. 2012, eq. 3, m = n)."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_matches_direct_estimator():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((24, 5)), rng.standard_normal((24, 5)) + 0.3
    # One subset holding every row: the estimate is the plain unbiased MMD² of the two sets.
    got = kernel_distance(x, y, num_subsets=1, max_subset_size=1000)
    assert got == pytest.approx(direct_unbiased_mmd2(x, y), rel=1e-10)


def test_kid_subsets_are_seeded_and_near_zero_for_one_distribution():
    rng = np.random.default_rng(5)
    x, y, z = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 1
    kid = kernel_distance(x, y, num_subsets=10, max_subset_size=100, seed=7)
    assert kid == kernel_distance(x, y, num_subsets=10, max_subset_size=100, seed=7)
    assert kid != kernel_distance(x, y, num_subsets=10, max_subset_size=100, seed=8)
    assert abs(kid) < 0.05 < kernel_distance(x, z, num_subsets=10, max_subset_size=100)
    with pytest.raises(ValueError, match="feature dims differ"):
        kernel_distance(x, z[:, :4])
