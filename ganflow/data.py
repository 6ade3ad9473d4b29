"""The tf.data pipeline around a dataset plugin's source."""

from __future__ import annotations

import tensorflow as tf

from ganflow.errors import UsageError
from ganflow.types import DataSource

SHUFFLE_BUFFER = 50_000


def batches_per_pass(size: int, batch_size: int, per_step: int) -> int:
    """Training steps in one pass over the data, when each step takes ``per_step`` real
    examples (``batch_size`` per update that reads real data)."""
    if size < per_step:
        updates = per_step // batch_size
        raise UsageError(
            f"one training step needs batch-size x {updates} updates = {batch_size} x "
            f"{updates} = {per_step} real examples, but the dataset has only {size}: lower "
            "--batch-size"
        )
    return size // per_step


def training_pipeline(source: DataSource, per_step: int, seed: int):
    """Endless batches of ``per_step`` real examples (with their labels, when the data has
    them), reshuffled every pass.

    The training step splits each batch so that every update sees fresh real data. Examples
    are cached after the first pass.
    """
    if source.spec.size < per_step:
        raise ValueError(f"a training step needs {per_step} real examples, but the dataset "
                         f"has only {source.spec.size}: check with batches_per_pass first")
    return (
        source.dataset()
        .cache()
        .shuffle(min(source.spec.size, SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        .batch(per_step, drop_remainder=True)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
