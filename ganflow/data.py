"""The tf.data pipeline around a dataset plugin's source."""

from __future__ import annotations

import tensorflow as tf

from ganflow.errors import UsageError
from ganflow.types import DataSource

SHUFFLE_BUFFER = 50_000


def batches_per_pass(size: int, batch_size: int, d_steps: int) -> int:
    """Training steps in one pass over the data: each step uses d_steps * batch_size examples."""
    per_step = batch_size * d_steps
    if size < per_step:
        raise UsageError(
            f"one training step needs batch-size x d-steps = {batch_size} x {d_steps} = "
            f"{per_step} examples, but the dataset has only {size}: lower --batch-size"
        )
    return size // per_step


def training_pipeline(source: DataSource, batch_size: int, d_steps: int, seed: int):
    """Endless batches of d_steps * batch_size real examples, reshuffled every pass.

    Each of a step's d_steps discriminator updates takes its own slice of the batch, so every
    update sees fresh real data. Examples are cached after the first pass.
    """
    batches_per_pass(source.spec.size, batch_size, d_steps)
    return (
        source.examples()
        .cache()
        .shuffle(min(source.spec.size, SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size * d_steps, drop_remainder=True)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
