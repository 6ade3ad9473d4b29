"""The types a plugin sees: what a dataset yields, what a loss computes, what a network is built from.

Nothing here imports TensorFlow at module level, so listing plugins stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class DataSpec:
    """What one example looks like; architectures are sized from it.

    shape: one example's shape, e.g. (32, 32, 1) for images or (2,) for points.
    size: number of examples in the training split.
    num_classes: number of label classes when the dataset is labelled, else None.
    """

    shape: tuple[int, ...]
    size: int
    num_classes: int | None = None

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


@dataclass(frozen=True)
class DatasetOptions:
    """Settings a dataset loader receives.

    argument: the part after the colon in ``--dataset NAME:ARGUMENT`` (``tfds:mnist`` gives
        ``mnist``), or None.
    data_dir: where prepared data lives (``--data-dir``), or None for the library's default.
    image_size: resize images to this many pixels a side (``--image-size``), or None to keep
        the dataset's own size.
    """

    argument: str | None = None
    data_dir: str | None = None
    image_size: int | None = None


class DataSource:
    """A dataset plugin's answer: a spec, and a function that makes the examples.

    ``make_dataset()`` returns a ``tf.data.Dataset`` of single float32 examples (in [-1, 1]
    for images), or of ``(example, label)`` pairs when ``labelled`` is true. ``info`` holds
    facts worth logging (e.g. how many corrupt files were skipped); they become MLflow params.
    ``density``, for toy data whose distribution is known, is the ``ganflow.Mixture`` the
    examples were drawn from: runs on it then log exact toy metrics (modes captured, share of
    high-quality samples, reverse KL of the mode histogram, JSD in 1-D). ``channel_source``,
    for data whose channels are each an example of another labelled source (Stacked MNIST:
    three digits as R, G and B, labelled 100a + 10b + c), is that source: the domain
    classifier is trained on it and labels each channel, and runs log the modes captured and
    the KL of the mode histogram to uniform, over its classes to the power of the channels
    (whatever the data's own labels, or with none).
    """

    def __init__(
        self,
        spec: DataSpec,
        make_dataset: Callable[[], Any],
        *,
        labelled: bool = False,
        info: dict[str, Any] | None = None,
        density: Any = None,
        channel_source: DataSource | None = None,
    ):
        self.spec = spec
        self._make_dataset = make_dataset
        self.labelled = labelled
        self.info = dict(info or {})
        self.density = density
        self.channel_source = channel_source

    @classmethod
    def from_arrays(cls, x, y=None, *, num_classes=None, info=None, density=None) -> DataSource:
        """Wrap in-memory examples (and optional integer labels) as a source."""
        import numpy as np
        import tensorflow as tf

        x = np.asarray(x, dtype=np.float32)
        if y is not None:
            y = np.asarray(y, dtype=np.int64)
            if num_classes is None:
                num_classes = int(y.max()) + 1
        spec = DataSpec(shape=tuple(x.shape[1:]), size=len(x), num_classes=num_classes)

        def make():
            return tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))

        return cls(spec, make, labelled=y is not None, info=info, density=density)

    def dataset(self):
        """A fresh ``tf.data.Dataset``: examples, or (example, label) pairs when labelled."""
        return self._make_dataset()

    def subset(self, fraction: float) -> DataSource:
        """A fixed share of the examples: round(``fraction`` x size) of them, drawn once
        (the same in every run, whatever its ``--seed``), in the source's order."""
        import numpy as np
        import tensorflow as tf

        from ganflow import noise
        from ganflow.errors import UsageError

        count = round(fraction * self.spec.size)
        if count < 1:
            raise UsageError(f"--data-fraction {fraction} of {self.spec.size} examples keeps "
                             "none: give a larger fraction")
        keep = np.zeros(self.spec.size, bool)
        keep[noise.rng(0, "subset").choice(self.spec.size, count, replace=False)] = True
        kept = tf.constant(keep)

        def make():
            return self.dataset().enumerate().filter(lambda i, _: kept[i]).map(
                lambda _, example: example)

        spec = DataSpec(self.spec.shape, count, self.spec.num_classes)
        return DataSource(spec, make, labelled=self.labelled,
                          info={**self.info, "fraction": fraction, "full_size": self.spec.size},
                          density=self.density, channel_source=self.channel_source)

    @property
    def nbytes(self) -> int:
        """The examples' size as training holds them (float32)."""
        import math

        return self.spec.size * math.prod(self.spec.shape) * 4

    def examples(self):
        """The examples alone, without labels: what a GAN trains on."""
        ds = self.dataset()
        return ds.map(lambda x, y: x) if self.labelled else ds


class Loss:
    """A GAN objective on the discriminator's logits s (D(x) = sigmoid(s)): the short way to
    write a loss, which ganflow adapts to the step (``ganflow.StepLoss`` is the contract
    underneath, and sees the whole update).

    Subclass it, or write any object with the same methods. Both losses are minimized and
    return a scalar. A ``penalty(discriminator, real, fake)`` method still works but is
    deprecated (a ``ganflow.GanflowDeprecationWarning`` says so): it runs as the
    discriminator regularizer ``penalty``; write a ``ganflow.Regularizer`` instead.
    """

    def discriminator_loss(self, real_logits, fake_logits):
        raise NotImplementedError

    def generator_loss(self, fake_logits):
        raise NotImplementedError


@dataclass
class FittedDensity:
    """What a maximum-likelihood architecture's ``fit(source, seed)`` returns.

    generator: a keras.Model from (batch, latent_dim) standard normal noise to examples,
        logged and registered like a GAN's generator.
    log_prob: maps examples (n, *shape) to their log densities (n,) under the fitted model.
    info: facts worth logging as params (components, iterations, converged, ...).
    """

    generator: Any
    log_prob: Callable[[Any], Any]
    info: dict[str, Any]


@dataclass(frozen=True)
class FeatureOptions:
    """What a feature extractor's factory receives.

    source: the dataset the samples are compared with (a ``DataSource``).
    dataset: how the user named it (``digits``, ``tfds:mnist``); with the source's spec, a
        cache key for what the extractor learns from the data.
    weights: ``--weights PATH``, or None for the extractor's own default.
    cache_dir: a folder the extractor may keep files in between runs (``GANFLOW_CACHE_DIR``,
        else ``~/.cache/ganflow``).
    log: prints a progress line for the user (on stderr).
    """

    source: Any
    dataset: str
    weights: str | None = None
    cache_dir: Any = None
    log: Callable[[str], None] = print


class FeatureExtractor(Protocol):
    """What a feature extractor's factory returns.

    ``extract(examples)`` maps a batch of examples (n, *spec.shape), as a dataset yields them,
    to ``(features, classes)``: features (n, d) float, and the predicted class of each example
    (n,) int, or None when the extractor does not classify. ``info`` holds facts worth logging
    (the classifier's test accuracy, where its weights came from).
    """

    info: dict[str, Any]

    def extract(self, examples): ...


class Architecture(Protocol):
    """Builds the two networks for a dataset.

    ``build_generator(spec, latent_dim)`` returns a keras.Model from (batch, latent_dim) to
    (batch, *spec.shape); ``build_discriminator(spec)`` one from (batch, *spec.shape) to
    (batch, 1) logits. The engine checks both shapes before training. An architecture that
    can condition on the class label takes ``num_classes=`` in both (a conditional run passes
    the data's number of classes): G then takes ``[z, labels]`` and D ``[x, labels]``, labels
    int32 of shape (batch,).
    """

    def build_generator(self, spec: DataSpec, latent_dim: int, num_classes: int | None = None):
        ...

    def build_discriminator(self, spec: DataSpec, num_classes: int | None = None): ...
