"""FID, KID, precision/recall and class metrics against closed forms and explicit sums."""

import numpy as np
import pytest
import scipy.linalg

from ganflow import metrics
from ganflow.metrics import MetricError


def random_covariance(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def closed_form(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2, by eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_frechet_distance_of_diagonal_gaussians_is_the_textbook_sum():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))  # 1+6.25+4+1
    assert expected == pytest.approx(12.25)
    got = metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_of_correlated_gaussians_matches_the_closed_form(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_covariance(rng, d), random_covariance(rng, d)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(closed_form(mu1, s1, mu2, s2), rel=1e-6)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_samples_approaches_the_population_value():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20_000, 4))
    b = rng.standard_normal((20_000, 4)) * 2.0 + 1.0
    # Population: 4 * 1^2 + 4 * (1 + 4 - 2 * 2) = 8
    assert metrics.fid(a, b) == pytest.approx(8.0, rel=0.03)


def test_singular_covariances_get_the_eps_offset_and_stay_finite():
    rng = np.random.default_rng(1)
    # 10 samples in 64 dimensions: both covariances have rank 9.
    a, b = rng.standard_normal((10, 64)), rng.standard_normal((10, 64))
    mu1, s1 = metrics.statistics(a)
    mu2, s2 = metrics.statistics(b)
    assert np.linalg.matrix_rank(s1) == 9
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    # The distance is that of the offset Gaussians N(mu, S + eps I).
    def with_offset(eps):
        shift = eps * np.eye(64)
        return closed_form(mu1, s1 + shift, mu2, s2 + shift)

    # The square roots of the ~1e-6 eigenvalues the offset leaves amplify round-off: 1e-4.
    assert got == pytest.approx(with_offset(1e-6), rel=1e-4)
    # A visible offset shows that it is the offset version that is computed.
    got = metrics.frechet_distance(mu1, s1, mu2, s2, eps=1e-2)
    assert got == pytest.approx(with_offset(1e-2), rel=1e-6)
    assert abs(got - closed_form(mu1, s1, mu2, s2)) > 0.1
    # Full-rank covariances get no offset.
    full = np.eye(64) * 1e-2
    assert metrics.frechet_distance(mu1, s1 + full, mu2, s2 + full, eps=1.0) == \
        pytest.approx(closed_form(mu1, s1 + full, mu2, s2 + full), rel=1e-6)
    # A constant feature (zero variance) is singular too.
    a[:, 0] = b[:, 0] = 3.0
    assert np.isfinite(metrics.fid(a, b))
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-6)  # not -2 d eps


def test_a_non_negligible_imaginary_part_is_an_error_not_dropped():
    # diag(1, -1) is not a covariance: sqrt of the product has an imaginary entry of 1.
    with pytest.raises(MetricError, match="imaginary part of 1"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))


def test_round_off_imaginary_parts_are_dropped(monkeypatch):
    real_sqrtm = scipy.linalg.sqrtm
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 1e-9j)
    assert metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), 4 * np.eye(2)) == \
        pytest.approx(2.0, rel=1e-6)  # 2 * (1 + 4 - 2 * 2)


def explicit_mmd2(x, y):
    """The unbiased MMD^2 as the double sums of its definition."""
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_explicit_double_sum():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 5)) + 0.5
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(explicit_mmd2(x, y), rel=1e-10)
    # The kernel is scikit-learn's, bit for bit (the same operations, without its checks).
    from sklearn.metrics.pairwise import polynomial_kernel

    np.testing.assert_array_equal(metrics._cubic_kernel(x, y, 0.2),
                                  polynomial_kernel(x, y, degree=3, gamma=0.2, coef0=1))
    # Subsets are at most half of a set (15 here), so they differ and the std says how much.
    mean, std = metrics.kid(x, y, subsets=200, subset_size=1000, seed=3)
    assert std > 0 and abs(mean - explicit_mmd2(x, y)) < 3 * std / np.sqrt(200)


def test_kid_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2000, 8)), rng.standard_normal((2000, 8))
    mean, std = metrics.kid(x, y, subsets=50, subset_size=500)
    assert abs(mean) < 3 * std / np.sqrt(50) + 1e-3  # can be negative: it is unbiased
    far, _ = metrics.kid(x, y + 1.0, subsets=10, subset_size=500)
    assert far > 100 * abs(mean)


def test_precision_and_recall_are_one_for_identical_sets_and_zero_for_disjoint():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 16))
    assert metrics.precision_recall(x, x.copy()) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)
    # Two samples of one distribution: both high, neither exactly 1.
    p, r = metrics.precision_recall(x, rng.standard_normal((500, 16)))
    assert 0.5 < p < 1.0 and 0.5 < r < 1.0


def test_precision_and_recall_tell_mode_dropping_from_poor_quality():
    rng = np.random.default_rng(6)
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    real = centres[rng.integers(0, 2, 1000)] + 0.3 * rng.standard_normal((1000, 2))
    one_mode = centres[0] + 0.3 * rng.standard_normal((1000, 2))
    precision, recall = metrics.precision_recall(real, one_mode)
    assert precision > 0.9 and 0.4 < recall < 0.6  # good samples, half the data missed
    blurry = real + 3.0 * rng.standard_normal((1000, 2))
    precision, recall = metrics.precision_recall(real, blurry)
    assert precision < 0.5


def test_class_coverage_and_kl():
    data = metrics.class_histogram(np.repeat(np.arange(10), 10), 10)
    np.testing.assert_allclose(data, 0.1)
    same = metrics.class_histogram(np.arange(1000) % 10, 10)
    assert metrics.class_coverage(same, data) == 1.0 and metrics.class_kl(same, data) == pytest.approx(0)
    # Half the classes, evenly: coverage 0.5, KL = log 2.
    half = metrics.class_histogram(np.arange(1000) % 5, 10)
    assert metrics.class_coverage(half, data) == 0.5
    assert metrics.class_kl(half, data) == pytest.approx(np.log(2))
    # A class seen in 5 of 1000 samples (0.5% against 10% in the data) is not covered.
    stray = np.concatenate([np.arange(995) % 9, np.full(5, 9)])
    assert metrics.class_coverage(metrics.class_histogram(stray, 10), data) == 0.9
