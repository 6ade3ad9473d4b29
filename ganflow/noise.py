"""The random streams of a run: every noise vector, label and held-out draw ganflow makes,
by seed and stream name.

A stream is an independent sequence derived from the run's ``--seed``: the same seed and
stream always give the same numbers, and two streams never share any. Fixed noise batches
(sample grids, evaluations) are NumPy draws; noise inside the training step comes from Keras
``SeedGenerator``s (``seed_generator``), which TensorFlow can trace. Not from here: a
dataset's own shuffling (``ganflow.data``, seeded by ``--seed``) and the metrics' subsets
(``ganflow.metrics.kid`` takes the seed it is given), which are functions of their seed.
"""

from __future__ import annotations

import functools

import numpy as np

from ganflow.devices import replica

# Stream ids; never reuse or renumber one, or saved numbers stop being reproducible.
STREAMS = {
    "eval": 1,  # fixed noise of sample-quality evaluations (run and `ganflow evaluate`)
    "reference": 2,  # which real examples an evaluation compares with
    "grid": 3,  # the fixed noise of each epoch's sample picture
    "sample": 4,  # `ganflow sample`
    "heldout": 5,  # held-out draws from a known density (maximum-likelihood runs)
    "theory": 6,  # `ganflow theory`'s fixed noise
    "plugins": 7,  # randomness of losses and regularizers (Step.seed_generator)
    "labels": 8,  # the labels a conditional generator is asked for in an evaluation
    "example": 9,  # the input example logged with a generator
    "subset": 10,  # which examples --data-fraction keeps (under seed 0: the same in every run)
}


def rng(seed: int, stream: str) -> np.random.Generator:
    """A NumPy generator for ``stream`` under ``seed``."""
    return np.random.default_rng([int(seed), STREAMS[stream]])


def latent(count: int, dim: int, seed: int, stream: str) -> np.ndarray:
    """``count`` standard normal latent vectors (float32) of ``stream`` under ``seed``."""
    return rng(seed, stream).standard_normal((count, dim)).astype(np.float32)


def labels(count: int, shares, seed: int, stream: str = "labels") -> np.ndarray:
    """``count`` class labels (int32) drawn with the probabilities ``shares``."""
    shares = np.asarray(shares, np.float64)
    return rng(seed, stream).choice(len(shares), size=count, p=shares / shares.sum()).astype(
        np.int32)


MAX_CLASS_ROWS = 16  # a grid of a generator with more classes has one sample a class


def class_rows(count: int, num_classes: int) -> np.ndarray:
    """Labels (int32) for a grid of a conditional generator's samples: one row per class, each
    class ``ceil(count / num_classes)`` times, in order; with more than ``MAX_CLASS_ROWS``
    classes (a row each would make a grid a thousand rows tall), ``count`` labels 0, 1, 2, ...,
    one sample a class, starting again at 0 after the last class."""
    if num_classes > MAX_CLASS_ROWS:
        return np.arange(count, dtype=np.int32) % num_classes
    per_class = -(-count // num_classes)
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def grid_columns(labels: np.ndarray) -> int | None:
    """The columns of a grid of samples of ``class_rows`` labels (or a prefix of them): one
    row per class when each class has a run of several, else None (a near-square grid)."""
    labels = np.asarray(labels)
    per_class = int(np.bincount(labels).max())
    return per_class if per_class > 1 and np.all(np.diff(labels) >= 0) else None


def seed_generator(seed: int | None, stream: str):
    """A ``keras.random.SeedGenerator`` for ``stream``: ``"train"`` (G's noise in the training
    step) takes the seed itself; other streams a seed derived from it. The ``"plugins"``
    stream draws differently on each replica (``per_replica_seed_generator()``)."""
    import keras

    kind = per_replica_seed_generator() if stream == "plugins" else keras.random.SeedGenerator
    if seed is None:
        return kind(None)
    if stream == "train":
        return kind(int(seed))
    derived = np.random.SeedSequence([int(seed), STREAMS[stream]]).generate_state(1)[0]
    return kind(int(derived) % (2**31 - 1))


@functools.cache
def per_replica_seed_generator():
    """The class ``PerReplicaSeedGenerator`` (made on first use: importing this module needs
    no TensorFlow)."""
    import keras
    import tensorflow as tf

    class PerReplicaSeedGenerator(keras.random.SeedGenerator):
        """A SeedGenerator whose draws differ between the replicas of a ``tf.distribute``
        step: the replica's index is folded into each seed. Its state (what a checkpoint
        saves) advances as a plain SeedGenerator's, in step on every replica; with one
        replica it draws exactly what a plain SeedGenerator draws."""

        def next(self, ordered=True):
            seed = super().next(ordered=ordered)
            index, replicas = replica()
            if replicas == 1:
                return seed
            folded = tf.random.experimental.stateless_fold_in(
                tf.cast(seed, "int64"), tf.cast(index, "int32"))
            return tf.cast(folded, seed.dtype)

    return PerReplicaSeedGenerator
