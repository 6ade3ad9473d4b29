"""The maximum-likelihood baseline: ``--arch gmm[:K]`` and the ``gmm-mle`` recipe.

The architecture has no networks: the ``mle`` trainer fits it. P_G is a Gaussian mixture with spherical components, fitted by EM (scikit-learn's
GaussianMixture) to maximize sum_i log P_G(x_i). Its sampler is a Keras generator from standard
normal noise (``ganflow.Mixture.sampler``), logged and registered like a GAN's, so ``ganflow
sample`` and the MLflow UI treat both alike.
"""

from __future__ import annotations

import numpy as np

import ganflow

DEFAULT_COMPONENTS = 10


class GMM:
    """Fitted, not trained adversarially: the ``mle`` trainer calls ``fit``.

    ``n_components`` defaults to the data's own number of components when its density is known
    (the model family then contains P_data, which is the baseline the lecture draws), else 10.
    """

    def __init__(self, n_components: int | None = None):
        self.n_components = n_components

    @classmethod
    def from_argument(cls, argument: str | None) -> GMM:
        if argument is None:
            return cls()
        if not argument.isdigit() or int(argument) < 1:
            raise ganflow.UsageError(
                f"--arch gmm:{argument}: give the number of components, e.g. --arch gmm:8"
            )
        return cls(int(argument))

    def fit(self, source: ganflow.DataSource, seed: int) -> ganflow.FittedDensity:
        from sklearn.mixture import GaussianMixture

        if len(source.spec.shape) != 1:
            raise ganflow.UsageError(
                f"architecture gmm fits points (shape (d,)); the dataset's examples have shape "
                f"{source.spec.shape}"
            )
        x = np.stack(list(source.examples().as_numpy_iterator())).astype(np.float64)
        k = self.n_components
        if k is None:
            k = source.density.n_components if source.density is not None else DEFAULT_COMPONENTS
        gm = GaussianMixture(k, covariance_type="spherical", n_init=3, random_state=seed)
        gm.fit(x)
        fitted = ganflow.Mixture(gm.means_, np.sqrt(gm.covariances_), gm.weights_)
        return ganflow.FittedDensity(
            generator=fitted.sampler(name="generator"),
            log_prob=gm.score_samples,
            info={"components": k, "em_iterations": int(gm.n_iter_),
                  "em_converged": bool(gm.converged_)},
        )


@ganflow.hookimpl
def ganflow_register_architectures(register):
    register("gmm", GMM.from_argument,
             "Gaussian mixture fitted by EM (maximum likelihood), K components",
             argument="K", argument_optional=True)


@ganflow.hookimpl
def ganflow_register_recipes(register):
    register("gmm-mle", {"trainer": "mle", "arch": "gmm", "dataset": "ring8"},
             "the maximum-likelihood baseline: a Gaussian mixture fitted by EM; seconds")
