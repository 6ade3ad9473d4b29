"""Stacked MNIST (Metz et al. 2017, "Unrolled GANs"; VEEGAN; PacGAN) on the bundled digits: the
``stacked-digits`` dataset.

Each example is three digits drawn independently and uniformly from the 1,797 bundled ones
(each brought to 32x32 as the ``digits`` dataset does), stacked as the R, G and B channels:
1,000 modes, labelled 100a + 10b + c. The dataset is a fixed set of N such triples, drawn once
with a fixed seed (the same in every run, whatever its ``--seed``), so an epoch is one pass
over the N examples as in PacGAN's Table 2 code: 128,000 by default (VEEGAN's and PacGAN's
Table 2 training set). Only the N index triples are held; the images are gathered from the
digits as the pipeline reads them.

Its ``channel_source`` is the digits: the domain classifier is the digits' one, applied to
each channel, and runs log ``modes_captured`` and ``kl_to_uniform`` (``ganflow.evaluation``).
"""

from __future__ import annotations

import numpy as np

import ganflow

DEFAULT_COUNT = 128_000
CHANNELS = 3
STACK_SEED = 0  # the set of triples: fixed, so every run trains on the same dataset


def load_stacked_digits(options: ganflow.DatasetOptions) -> ganflow.DataSource:
    import tensorflow as tf

    from ganflow_plugins.datasets import load_digits

    count = DEFAULT_COUNT
    if options.argument:
        try:
            count = int(options.argument.replace("_", ""))
        except ValueError:
            count = 0
        if count < 1:
            raise ganflow.UsageError(f"--dataset stacked-digits:{options.argument}: the number "
                                     "of stacked examples, a whole number from 1 (e.g. 25600)")
    digits = load_digits(ganflow.DatasetOptions(image_size=options.image_size))
    images, labels = (np.concatenate(part) for part in zip(
        *digits.dataset().batch(4096).as_numpy_iterator()))
    triples = np.random.default_rng(STACK_SEED).integers(0, len(images), (count, CHANNELS))
    stacked_labels = (labels[triples] * np.array([100, 10, 1])).sum(axis=1)
    side = images.shape[1]

    def make():
        base = tf.constant(images[..., 0])  # (1797, side, side)

        def stack(triple, label):
            return tf.transpose(tf.gather(base, triple), (1, 2, 0)), label

        return tf.data.Dataset.from_tensor_slices(
            (triples.astype(np.int32), stacked_labels)).map(
            stack, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    spec = ganflow.DataSpec(shape=(side, side, CHANNELS), size=count, num_classes=10 ** CHANNELS)
    return ganflow.DataSource(spec, make, labelled=True, channel_source=digits,
                              info={"stacked_count": count, "channels_of": "digits"})


@ganflow.hookimpl
def ganflow_register_datasets(register):
    register("stacked-digits", load_stacked_digits, "Stacked MNIST on the bundled digits: "
             "three digits as R, G, B, 1,000 modes; N fixed examples (default 128,000)",
             argument="N", argument_optional=True)
