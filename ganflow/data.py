"""The tf.data pipeline around a dataset plugin's source."""

from __future__ import annotations

import tensorflow as tf

from ganflow.errors import UsageError
from ganflow.types import DataSource

MEMORY_SHARE = 4  # --cache auto keeps examples that fit in 1/MEMORY_SHARE of the memory


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


def training_pipeline(source: DataSource, per_step: int, seed: int, cache: str = "auto",
                      shuffle_mb: int = 256):
    """Endless batches of ``per_step`` real examples (with their labels, when the data has
    them), reshuffled every pass through a buffer of at most ``shuffle_mb`` MB (the whole
    dataset when it is smaller). The training step splits each batch so that every update
    sees fresh real data.

    ``cache``: keep the examples in memory after the first pass (``memory``), never
    (``none``: each pass reads the source again; a prepared dataset streams from its shards),
    or when they fit in a quarter of this machine's memory (``auto``).
    """
    if source.spec.size < per_step:
        raise ValueError(f"a training step needs {per_step} real examples, but the dataset "
                         f"has only {source.spec.size}: check with batches_per_pass first")
    data = source.dataset()
    if caches(source, cache):
        data = data.cache()
    return (
        data.shuffle(shuffle_size(source, shuffle_mb), seed=seed, reshuffle_each_iteration=True)
        .batch(per_step, drop_remainder=True)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )


def input_rate(pipeline, per_step: int, seconds: float = 2.0, warm: int = 3) -> float:
    """Examples per second ``pipeline`` (batches of ``per_step``) gives with nothing else
    running: timed after ``warm`` batches (the shuffle buffer's first fill), for about
    ``seconds`` (at least one batch)."""
    import time

    batches = iter(pipeline)
    for _ in range(warm):
        next(batches)
    started, count = time.perf_counter(), 0
    while count == 0 or time.perf_counter() - started < seconds:
        next(batches)
        count += 1
    return count * per_step / (time.perf_counter() - started)


def caches(source: DataSource, cache: str) -> bool:
    """Whether ``--cache cache`` keeps ``source``'s examples in memory."""
    if cache == "auto":
        return source.nbytes <= memory_bytes() // MEMORY_SHARE
    return cache == "memory"


def shuffle_size(source: DataSource, shuffle_mb: int) -> int:
    """Examples in a shuffle buffer of ``shuffle_mb`` MB (at least 1, at most all of them)."""
    per_example = max(source.nbytes // max(source.spec.size, 1), 1)
    return max(1, min(source.spec.size, shuffle_mb * 2**20 // per_example))


def memory_bytes() -> int:
    """This machine's physical memory."""
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
