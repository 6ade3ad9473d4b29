"""Gaussian mixtures with known densities: toy data, fixed P_G's, and exact divergences.

A ``Mixture`` has K isotropic Gaussian components in d dimensions. It samples, evaluates
``log_prob`` exactly, parses from the JSON the CLI takes, and turns into a Keras sampler (a
generator from standard normal noise with no trainable weights). ``jsd`` integrates the
Jensen-Shannon divergence of two 1-D densities numerically.

TensorFlow is imported only by ``Mixture.sampler()``.
"""

from __future__ import annotations

import json
import math

import numpy as np
from scipy import integrate, special, stats

from ganflow.errors import UsageError

SHORT_FORM = "means=-2,2/stds=0.5,0.5/weights=0.5,0.5"


MEAN_BOUND = 1e4
STD_BOUNDS = (1e-3, 1e4)


class Mixture:
    """sum_k weights[k] * N(means[k], stds[k]^2 I).

    means: (K,) for 1-D or (K, d); stds: one per component (or one for all); weights: one per
    component (default equal), normalised to sum to 1.
    """

    def __init__(self, means, stds, weights=None):
        means = np.asarray(means, dtype=np.float64)
        if means.ndim == 1:
            means = means[:, None]
        if means.ndim != 2 or len(means) == 0:
            raise UsageError(f"mixture means must be a list of numbers or of points, got {means.tolist()}")
        if not np.all(np.isfinite(means)):
            raise UsageError(f"mixture means must be finite numbers, got {means.squeeze(-1).tolist() if means.shape[1] == 1 else means.tolist()}")
        k = len(means)
        stds = np.broadcast_to(np.asarray(stds, dtype=np.float64), (k,)) if np.size(stds) in (1, k) else None
        if stds is None:
            raise UsageError(f"a mixture of {k} components needs 1 or {k} stds")
        weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (k,):
            raise UsageError(f"a mixture of {k} components needs {k} weights, got {weights.tolist()}")
        if not (np.all(stds > 0) and np.all(np.isfinite(stds))):
            raise UsageError(f"mixture stds must be positive, got {stds.tolist()}")
        # Beyond these, densities and their integrals leave float64 (a std of 1e-30 about a
        # mean of 1e30): far beyond any toy data or theory check.
        if np.abs(means).max() > MEAN_BOUND:
            raise UsageError(f"mixture means must lie within +-{MEAN_BOUND:g}, got "
                             f"{np.abs(means).max():g}")
        if stds.min() < STD_BOUNDS[0] or stds.max() > STD_BOUNDS[1]:
            raise UsageError(f"mixture stds must lie between {STD_BOUNDS[0]:g} and "
                             f"{STD_BOUNDS[1]:g}, got {stds.tolist()}")
        if not (np.all(weights > 0) and np.all(np.isfinite(weights))):
            raise UsageError(f"mixture weights must be positive, got {weights.tolist()}")
        self.means = means
        self.stds = np.array(stds)
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return len(self.means)

    def _points(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x[:, None] if x.ndim == 1 and self.dim == 1 else x

    def component_log_probs(self, x) -> np.ndarray:
        """(n, K): log(weights[k] * N(x; means[k], stds[k]^2 I)) for every point and component."""
        x = self._points(x)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        log_norm = -0.5 * self.dim * np.log(2 * np.pi * self.stds**2)
        return np.log(self.weights) + log_norm - 0.5 * sq / self.stds**2

    def log_prob(self, x) -> np.ndarray:
        """log density at each point: (n,) for x of shape (n, d), or (n,) in 1-D."""
        return special.logsumexp(self.component_log_probs(x), axis=1)

    def prob(self, x) -> np.ndarray:
        return np.exp(self.log_prob(x))

    def sample(self, n: int, seed=None, return_components: bool = False):
        """n float32 points (n, d); with ``return_components``, also each one's component."""
        rng = np.random.default_rng(seed)
        k = rng.choice(self.n_components, size=n, p=self.weights)
        x = self.means[k] + self.stds[k, None] * rng.standard_normal((n, self.dim))
        x = x.astype(np.float32)
        return (x, k) if return_components else x

    def grid(self, points_per_component: int = 801, width: float = 8.0) -> np.ndarray:
        """A sorted 1-D grid dense around every component (mean +- width * std)."""
        if self.dim != 1:
            raise ValueError("grid() is for 1-D mixtures")
        parts = [np.linspace(m - width * s, m + width * s, points_per_component)
                 for m, s in zip(self.means[:, 0], self.stds)]
        return np.unique(np.concatenate(parts))

    def to_dict(self) -> dict:
        means = self.means[:, 0] if self.dim == 1 else self.means
        return {"means": means.tolist(), "stds": self.stds.tolist(),
                "weights": self.weights.tolist()}

    @classmethod
    def from_dict(cls, data: dict, what: str = "mixture") -> Mixture:
        if not isinstance(data, dict) or "means" not in data or "stds" not in data:
            raise UsageError(f'{what}: expected {{"means": [...], "stds": [...], '
                             f'"weights": [...]}}, got {data!r}')
        unknown = set(data) - {"means", "stds", "weights"}
        if unknown:
            raise UsageError(f"{what}: unknown key(s) {', '.join(sorted(unknown))}; "
                             "the keys are means, stds, weights")
        try:
            return cls(data["means"], data["stds"], data.get("weights"))
        except (TypeError, ValueError, UsageError) as exc:
            raise UsageError(f"{what}: {exc}") from None

    @classmethod
    def parse(cls, text: str, what: str = "mixture") -> Mixture:
        """JSON ``{"means": [...], "stds": [...], "weights": [...]}`` or the short 1-D form
        ``means=-2,2/stds=0.5,0.5/weights=0.5,0.5`` (weights optional)."""
        text = text.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{what}: not valid JSON ({exc})") from None
            return cls.from_dict(data, what)
        data = {}
        for part in filter(None, text.split("/")):
            key, sep, values = part.partition("=")
            try:
                data[key.strip()] = [float(v) for v in values.split(",")]
            except ValueError:
                sep = ""
            if not sep:
                raise UsageError(f"{what}: cannot read {part!r}; write e.g. {SHORT_FORM} "
                                 'or JSON {"means": [...], "stds": [...]}')
        return cls.from_dict(data, what)

    def sampler(self, name: str = "mixture_sampler"):
        """A keras.Model from (batch, d + 1) standard normal noise to (batch, d) samples.

        The first noise coordinate picks the component (through the normal CDF), the others
        are scaled and shifted by it: an exact sampler with no trainable weights, which logs,
        registers and samples like any ganflow generator.
        """
        import keras

        z = keras.Input((self.dim + 1,))
        return keras.Model(z, sampler_layer()(self.to_dict())(z), name=name)

    def __repr__(self) -> str:
        return f"Mixture({self.to_dict()})"


def _xlogy_ratio(p, m):
    return special.xlogy(p, p) - special.xlogy(p, m)


def jsd(p: np.ndarray, q: np.ndarray, x: np.ndarray) -> float:
    """JSD(P || Q) in nats from densities p, q sampled on the sorted grid x (Simpson's rule).

    0 for identical densities, log 2 for disjoint ones.
    """
    m = 0.5 * (p + q)
    kl_pm = integrate.simpson(_xlogy_ratio(p, m), x=x)
    kl_qm = integrate.simpson(_xlogy_ratio(q, m), x=x)
    return float(min(max(0.5 * (kl_pm + kl_qm), 0.0), math.log(2.0)))


def mixture_jsd(a: Mixture, b: Mixture) -> float:
    """JSD between two 1-D mixtures, integrated on a grid fine around both."""
    x = np.unique(np.concatenate([a.grid(), b.grid()]))
    return jsd(a.prob(x), b.prob(x), x)


def kde_jsd(data: Mixture, samples: np.ndarray) -> float:
    """JSD between a 1-D mixture and a Gaussian kernel density estimate of ``samples``."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    kde = stats.gaussian_kde(samples)
    spread = 4.0 * kde.factor * samples.std()
    x = np.unique(np.concatenate([
        data.grid(),
        np.linspace(samples.min() - spread, samples.max() + spread, 2001),
    ]))
    return jsd(data.prob(x), kde(x), x)


_LAYER = []


def sampler_layer():
    """The Keras layer class behind ``Mixture.sampler()``, registered for loading saved models.

    Defined on first call so that importing this module needs no TensorFlow; call it before
    loading a model that contains one.
    """
    if _LAYER:
        return _LAYER[0]
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="ganflow")
    class MixtureSampler(keras.layers.Layer):
        """Maps standard normal noise (batch, d + 1) to exact mixture samples (batch, d)."""

        def __init__(self, mixture: dict, **kwargs):
            super().__init__(**kwargs)
            self.mixture = mixture
            m = Mixture.from_dict(mixture)
            self._means = m.means.astype("float32")
            self._stds = m.stds.astype("float32")
            self._edges = np.cumsum(m.weights)[:-1].astype("float32")

        def call(self, z):
            u = 0.5 * (1.0 + ops.erf(z[:, :1] / math.sqrt(2.0)))  # uniform on (0, 1)
            k = ops.sum(ops.cast(u > ops.convert_to_tensor(self._edges)[None, :], "int32"), axis=1)
            means = ops.take(ops.convert_to_tensor(self._means), k, axis=0)
            stds = ops.take(ops.convert_to_tensor(self._stds), k, axis=0)
            return means + stds[:, None] * z[:, 1:]

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[1] - 1)

        def get_config(self):
            return {**super().get_config(), "mixture": self.mixture}

    _LAYER.append(MixtureSampler)
    return MixtureSampler
