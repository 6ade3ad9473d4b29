"""What a trainer receives: ``TrainingSetup``, everything a run resolved, and the means to
build networks and optimizers from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ganflow.errors import UsageError
from ganflow.step import DISCRIMINATOR, GENERATOR


@dataclass(frozen=True)
class TrainingSetup:
    """Everything a trainer needs, resolved and checked.

    spec, source: the data (``ganflow.DataSpec``, ``ganflow.DataSource``).
    architecture: the ``--arch`` object; ``networks()`` builds and checks its two networks.
    loss: the ``--loss`` object (a ``ganflow.StepLoss`` or ``ganflow.Loss``).
    regularizers: the ``--regularizer``s, as ``ganflow.Regularization``s.
    latent_dim, d_steps, seed, ema, jit_compile: the run's settings of those names.
    conditional: whether G and D take the class label (``--conditional``); ``num_classes``
        is then the data's number of classes.
    augment: the ``--augment`` chain, a function (x, seed_generator) -> x, or None.
    steps_per_epoch, epochs: the run's length in training steps.
    names: the ``arch`` and ``dataset`` as the user wrote them, for messages.
    architecture_entry: the architecture's registry entry: its failures name its plugin.
    """

    spec: Any
    source: Any
    architecture: Any
    loss: Any
    regularizers: list
    latent_dim: int
    d_steps: int
    seed: int
    ema: float | None
    jit_compile: Any
    steps_per_epoch: int
    epochs: int
    # (network, total updates) -> a fresh optimizer with its learning-rate schedule
    make_optimizer: Callable[[str, int], Any] | None = None
    conditional: bool = False
    augment: Callable[[Any, Any], Any] | None = None
    names: dict[str, str] = field(default_factory=dict)
    architecture_entry: Any = None

    @property
    def total_steps(self) -> int:
        """Training steps in the whole run."""
        return self.steps_per_epoch * self.epochs

    @property
    def num_classes(self) -> int | None:
        """Label classes when the data is labelled, else None."""
        return self.spec.num_classes if getattr(self.source, "labelled", False) else None

    def optimizer(self, network: str, updates_per_step: int | None = None):
        """A fresh optimizer for ``network`` ("generator" or "discriminator"), with the run's
        optimizer, learning rate and schedule. ``updates_per_step`` (default: k for D, 1 for
        G) sets the schedule's length: the network's updates in the whole run."""
        if network not in (GENERATOR, DISCRIMINATOR):
            raise ValueError(f"network must be {GENERATOR!r} or {DISCRIMINATOR!r}")
        if updates_per_step is None:
            updates_per_step = self.d_steps if network == DISCRIMINATOR else 1
        return self.make_optimizer(network, self.total_steps * updates_per_step)

    def networks(self):
        """(generator, discriminator) from the architecture, checked against the data: G
        must make examples of the data's shape, D one logit per example. In a conditional
        run both are built with ``num_classes=`` and take ``[input, labels]``."""
        import inspect

        import numpy as np

        architecture = self.architecture
        arch = self.names.get("arch", type(architecture).__name__)
        if not callable(getattr(architecture, "build_generator", None)):
            raise UsageError(f"architecture {arch} has no networks to train adversarially "
                             "(it is fitted by maximum likelihood): use --trainer mle")
        extra = {}
        if self.conditional:
            if "num_classes" not in inspect.signature(architecture.build_generator).parameters:
                raise UsageError(f"architecture {arch} builds no conditional networks (its "
                                 "build_generator takes no num_classes): use --arch dcgan, or "
                                 "drop --conditional")
            extra = {"num_classes": self.num_classes}
        generator = self._call("to build its generator", architecture.build_generator,
                               self.spec, self.latent_dim, **extra)
        discriminator = self._call("to build its discriminator",
                                   architecture.build_discriminator, self.spec, **extra)
        labels = np.zeros((2,), np.int32)

        def given(x):
            return [x, labels] if self.conditional else x

        z = np.zeros((2, self.latent_dim), dtype=np.float32)
        made = tuple(generator(given(z), training=False).shape[1:])
        if made != tuple(self.spec.shape):
            raise UsageError(
                f"architecture {arch}'s generator makes examples of shape {made}, but "
                f"dataset {self.names.get('dataset', 'the dataset')} has examples of shape "
                f"{tuple(self.spec.shape)}"
            )
        examples = np.zeros((2, *self.spec.shape), np.float32)
        scored = tuple(discriminator(given(examples), training=False).shape[1:])
        if scored != (1,):
            raise UsageError(
                f"architecture {arch}'s discriminator outputs shape {scored} per example; "
                "it must output (1,): one logit"
            )
        return generator, discriminator

    def fit(self):
        """The architecture's density fitted to the data by maximum likelihood
        (``architecture.fit(source, seed)``, a ``ganflow.FittedDensity``)."""
        if not callable(getattr(self.architecture, "fit", None)):
            arch = self.names.get("arch", type(self.architecture).__name__)
            raise UsageError(
                f"architecture {arch} has no density to fit by maximum likelihood (it has "
                "networks): use --arch gmm[:K], or --trainer gan")
        return self._call("to fit", self.architecture.fit, self.source, self.seed)

    def _call(self, doing: str, function, *args, **kwargs):
        """An architecture's own code: its failures name its plugin."""
        if self.architecture_entry is None:
            return function(*args, **kwargs)
        return self.architecture_entry.call(doing, function, *args, **kwargs)
