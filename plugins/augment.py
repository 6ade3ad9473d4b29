"""Differentiable augmentation (DiffAugment, Zhao et al. 2020): ``color``, ``translation`` and
``cutout``, applied to every input of D while training, real and fake, in both updates.

Each is differentiable in its input, so G's gradient flows through the augmentation of its
fakes; the randomness is per example and comes from the step's seed generator. The operations
follow the paper's code: images in [-1, 1], translation pads with zeros.
"""

import keras
from keras import ops

import ganflow


def _uniform(x, seed_generator, low=0.0, high=1.0):
    """One uniform number per example, shaped to broadcast over the example: (m, 1, 1, 1)."""
    shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
    return keras.random.uniform(shape, low, high, dtype=x.dtype, seed=seed_generator)


class Color:
    """Brightness (+-0.5), saturation (x 0-2) and contrast (x 0.5-1.5), each random per example."""

    def __call__(self, x, seed_generator):
        x = x + _uniform(x, seed_generator, -0.5, 0.5)
        mean = ops.mean(x, axis=-1, keepdims=True)
        x = (x - mean) * _uniform(x, seed_generator, 0.0, 2.0) + mean
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        return (x - mean) * _uniform(x, seed_generator, 0.5, 1.5) + mean


class Translation:
    """Shift each image by up to ``ratio`` of its side in each direction, padding with 0."""

    def __init__(self, ratio):
        self.ratio = ratio

    def __call__(self, x, seed_generator):
        import tensorflow as tf

        batch = tf.shape(x)[0]

        def shifted(x, axis):
            size = x.shape[axis]
            shift = int(size * self.ratio + 0.5)
            offset = keras.random.randint((batch, 1), -shift, shift + 1, seed=seed_generator)
            grid = tf.clip_by_value(tf.range(size)[None, :] + tf.cast(offset, "int32") + 1, 0,
                                    size + 1)
            padding = [[0, 0]] * 4
            padding[axis] = [1, 1]
            # Each output row (column) picks one padded row (column): a product with a one-hot
            # matrix, exact. tf.gather(batch_dims=1) transposes inside, and XLA cannot compile
            # that transpose's gradient in a lazy regularizer's tf.cond ("InvertPermutation:
            # 0 is duplicated in the input").
            pick = tf.one_hot(grid, size + 2, dtype=x.dtype)  # (m, size, size + 2)
            spec = "bpwc,bsp->bswc" if axis == 1 else "bhpc,bsp->bhsc"
            return tf.einsum(spec, tf.pad(x, padding), pick)

        return shifted(shifted(x, 1), 2)


class Cutout:
    """Zero a square of ``ratio`` of the side, at a random place per image."""

    def __init__(self, ratio):
        self.ratio = ratio

    def __call__(self, x, seed_generator):
        height, width = x.shape[1], x.shape[2]
        size_h, size_w = int(height * self.ratio + 0.5), int(width * self.ratio + 0.5)
        batch = ops.shape(x)[0]
        # The square's centre, per image; the square may stick out of the image.
        centre_h = keras.random.randint((batch, 1), 0, height + (1 - size_h % 2),
                                        seed=seed_generator)
        centre_w = keras.random.randint((batch, 1), 0, width + (1 - size_w % 2),
                                        seed=seed_generator)
        rows = ops.arange(height)[None, :] - (centre_h - size_h // 2)
        cols = ops.arange(width)[None, :] - (centre_w - size_w // 2)
        inside_h = ops.logical_and(rows >= 0, rows < size_h)  # (m, height)
        inside_w = ops.logical_and(cols >= 0, cols < size_w)  # (m, width)
        cut = ops.logical_and(inside_h[:, :, None], inside_w[:, None, :])
        return x * ops.cast(ops.logical_not(cut), x.dtype)[..., None]


RATIO = ganflow.Setting(0.125, "largest shift, as a share of the side", minimum=0.0,
                        maximum=1.0)


@ganflow.hookimpl
def ganflow_register_augmentations(register):
    register("color", Color(), "random brightness, saturation and contrast per example")
    register("translation", Translation, "random shift per example, zero padding",
             settings={"ratio": RATIO})
    register("cutout", Cutout, "a zeroed square at a random place per example",
             settings={"ratio": ganflow.Setting(0.5, "the square's side, as a share of the "
                                                "image's", minimum=0.0, maximum=1.0)})
