"""ganflow: train GANs on TensorFlow/Keras 3 from plugins, tracked in MLflow.

The public API, for users and plugin authors:
- ``GAN``: the keras.Model that trains a generator against a discriminator.
- ``hookimpl``: marks a plugin's hook implementations (see ``ganflow.hookspecs``).
- ``Step``, ``StepLoss``, ``Loss``, ``Regularizer``, ``Regularization``: what losses and
  regularizers are and receive; ``value_function`` and ``LOG_4``: the lecture's V(G, D).
- ``Setting``: a plugin's declared setting (``--loss NAME:key=value``).
- ``TrainingSetup``: what a trainer receives.
- ``DataSpec``, ``DataSource``, ``DatasetOptions``, ``Architecture``, ``FittedDensity``,
  ``FeatureOptions``, ``FeatureExtractor``: what the other plugins receive and return.
- ``reachable(host, port)``: whether the network answers, so a download fails fast offline.
- ``prepared(path)``: the dataset ``ganflow prepare`` made in ``path``, streamed;
  ``prepared_cache(source)``: a folder or zip prepared once into ganflow's cache, streamed.
- ``replicas()``: how many replicas the networks being built will have (``--strategy``);
  ``replica_sum(x)``: a statistic summed over a step's replicas (for plugin state).
- ``Mixture``: a Gaussian mixture with a known density (toy data, fixed P_G's, exact JSD).
- ``ganflow.layers`` and ``ganflow.style`` (imported on their own: they import Keras): layers
  for architecture plugins (StyleGAN2's in ``ganflow.style``), registered with Keras so that
  generators using them save and load.
- ``GanflowError``, ``UsageError``, ``PluginError``: errors a user can act on;
  ``GanflowDeprecationWarning``: what still works but will not always.
"""

__version__ = "0.1.0"  # first: the modules imported below read it

import pluggy  # noqa: E402

from ganflow.dataset_tool import cached as prepared_cache  # noqa: E402
from ganflow.devices import replica_sum, replicas  # noqa: E402
from ganflow.errors import (  # noqa: E402
    GanflowDeprecationWarning,
    GanflowError,
    PluginError,
    UsageError,
)
from ganflow.mixture import Mixture  # noqa: E402
from ganflow.net import reachable  # noqa: E402
from ganflow.settings import Setting  # noqa: E402
from ganflow.shards import prepared  # noqa: E402
from ganflow.step import (  # noqa: E402
    LOG_4,
    Regularization,
    Regularizer,
    Step,
    StepLoss,
    value_function,
)
from ganflow.training import TrainingSetup  # noqa: E402
from ganflow.types import (  # noqa: E402
    Architecture,
    DataSource,
    DataSpec,
    DatasetOptions,
    FeatureExtractor,
    FeatureOptions,
    FittedDensity,
    Loss,
)

hookimpl = pluggy.HookimplMarker("ganflow")

__all__ = [
    "GAN",
    "LOG_4",
    "Architecture",
    "DataSource",
    "DataSpec",
    "DatasetOptions",
    "FeatureExtractor",
    "FeatureOptions",
    "FittedDensity",
    "GanflowDeprecationWarning",
    "GanflowError",
    "Loss",
    "Mixture",
    "PluginError",
    "Regularization",
    "Regularizer",
    "Setting",
    "Step",
    "StepLoss",
    "TrainingSetup",
    "UsageError",
    "hookimpl",
    "prepared",
    "prepared_cache",
    "reachable",
    "replica_sum",
    "replicas",
    "value_function",
]


def __getattr__(name):
    # GAN needs TensorFlow (seconds to import); `ganflow --help` and config checks do not.
    if name == "GAN":
        from ganflow.gan import GAN

        return GAN
    raise AttributeError(f"module 'ganflow' has no attribute {name!r}")
