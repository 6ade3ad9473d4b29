"""Sample-quality metrics on feature vectors: FID, KID, improved precision/recall, class coverage.

Pure NumPy/SciPy/scikit-learn, no TensorFlow: every function takes arrays of features (one
row per example) or class predictions and returns numbers. ``ganflow.evaluation`` gets the
features from a feature-extractor plugin.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import sklearn
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors

from ganflow.errors import GanflowError

# sqrtm's result counts as exact when ||X X - A||_F / ||A||_F is below this.
SQRTM_TOLERANCE = 1e-5
# Imaginary parts up to this, relative to the largest real entry, are round-off and dropped.
IMAGINARY_TOLERANCE = 1e-3


class MetricError(GanflowError):
    """A metric that cannot be computed from these features (not a user's typo)."""

    exit_code = 1


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features (n, d), in float64; what FID compares."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise MetricError(f"FID needs at least 2 feature vectors (n, d), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet distance of two Gaussians.

    The square root is scipy's (the FID reference implementations use the same). When a
    covariance is singular, as with fewer samples than dimensions or a constant feature, or
    the root is inaccurate or not finite, ``eps`` is added to both diagonals (the usual
    offset) and the distance is that of the offset Gaussians. (pytorch-fid offsets only the
    square root's argument, which makes identical sets score -2 d eps; this stays >= 0.)
    A non-negligible imaginary part means the product has negative eigenvalues (a covariance
    that is not positive semi-definite): that raises instead of being dropped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise MetricError(f"FID: means {mu1.shape}, {mu2.shape} and covariances "
                          f"{sigma1.shape}, {sigma2.shape} do not match")
    singular = any(np.linalg.matrix_rank(s, hermitian=True) < len(s) for s in (sigma1, sigma2))
    covmean = None if singular else _sqrtm(sigma1 @ sigma2)
    if covmean is None:
        offset = np.eye(len(mu1)) * eps
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
        covmean = _sqrtm(sigma1 @ sigma2)
        if covmean is None:
            raise MetricError("FID: the covariance product has no accurate square root even "
                              f"with an offset of {eps}: use more samples")
    if np.iscomplexobj(covmean):
        imaginary = np.abs(covmean.imag).max()
        scale = max(np.abs(covmean.real).max(), 1e-12)
        if imaginary > IMAGINARY_TOLERANCE * scale:
            raise MetricError(
                f"FID: the square root of the covariance product has an imaginary part of "
                f"{imaginary:.3g} (largest real entry {scale:.3g}): a covariance is not "
                "positive semi-definite"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(matrix: np.ndarray) -> np.ndarray | None:
    """scipy's matrix square root, or None when scipy finds the matrix singular or the root
    is not finite or not accurate."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            root = scipy.linalg.sqrtm(matrix)
        except scipy.linalg.LinAlgWarning:
            return None
    if not np.isfinite(root).all():
        return None
    norm = np.linalg.norm(matrix)
    if norm > 0 and np.linalg.norm(root @ root - matrix) / norm > SQRTM_TOLERANCE:
        return None
    return root


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """The Frechet Inception Distance of two feature sets (n, d), whatever the features."""
    return frechet_distance(*statistics(real), *statistics(fake))


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): (mean, std) over random subsets.

    Each subset draws ``subset_size`` rows of each set without replacement (at most half of
    either set, so subsets differ) and computes the unbiased MMD^2 with the kernel
    k(x, y) = (x.y / d + 1)^3. The estimate is unbiased whatever the subset size.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real) // 2, len(fake) // 2)
    if m < 2:
        raise MetricError("KID needs at least 2 feature vectors in each set")
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(real[rng.choice(len(real), m, replace=False)],
                      fake[rng.choice(len(fake), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-sized sets under the cubic polynomial kernel."""
    m = len(x)
    gamma = 1.0 / x.shape[1]
    kxx, kyy = _cubic_kernel(x, x, gamma), _cubic_kernel(y, y, gamma)
    kxy = _cubic_kernel(x, y, gamma)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def _cubic_kernel(x: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
    """(x.y * gamma + 1)^3: scikit-learn's ``polynomial_kernel(degree=3, coef0=1)``, the same
    operations in the same order (so the same bits), without its input checks, which cost
    ten times the kernel on an evaluation of a few hundred samples (KID calls it 300 times)."""
    k = x @ y.T
    k *= gamma
    k += 1.0
    k **= 3
    return k


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), on equal-sized sets.

    Each set's manifold is the union of balls around its points, each reaching the point's
    k-th nearest neighbour. Precision: the share of fake points inside the real manifold;
    recall: the share of real points inside the fake one. The larger set is cut to the
    smaller's size first (ball radii shrink as a set grows).
    """
    m = min(len(real), len(fake))
    if m <= k:
        raise MetricError(f"precision/recall need more than k = {k} feature vectors in each set")
    real = np.asarray(real[:m], np.float64)
    fake = np.asarray(fake[:m], np.float64)
    return _coverage(real, fake, k), _coverage(fake, real, k)


# The distance blocks precision and recall compute at once, in MB (scikit-learn's default
# is 1,024: 10,000 x 10,000 distances, and as much again compared, beside a training run).
WORKING_MEMORY_MB = 64


def _coverage(manifold: np.ndarray, points: np.ndarray, k: int) -> float:
    """The share of ``points`` within the k-NN balls around ``manifold``'s points."""
    with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
        # The nearest neighbour of each point is itself, so ask for k + 1.
        radii = NearestNeighbors(n_neighbors=k + 1).fit(manifold).kneighbors(manifold)[0][:, -1]
        inside = [
            (chunk <= radii[None, :]).any(axis=1)
            for chunk in pairwise_distances_chunked(points, manifold)
        ]
    return float(np.concatenate(inside).mean())


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The share of each class among integer labels."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1)


def class_coverage(generated: np.ndarray, data: np.ndarray, share: float = 0.1) -> float:
    """The share of the data's classes present among generated samples.

    ``generated`` and ``data`` are class histograms. A class is present when it holds at
    least ``share`` (a tenth) of its share in the data: a few stray predictions do not count.
    """
    generated, data = np.asarray(generated), np.asarray(data)
    classes = data > 0
    return float(np.mean(generated[classes] >= share * data[classes]))


def class_kl(generated: np.ndarray, data: np.ndarray) -> float:
    """KL(generated || data) of two class histograms, in nats; 0 when they match.

    Finite whenever every generated class occurs in the data.
    """
    generated, data = np.asarray(generated, np.float64), np.asarray(data, np.float64)
    present = generated > 0
    if np.any(data[present] == 0):
        return float("inf")
    return float(np.sum(generated[present] * np.log(generated[present] / data[present])))
