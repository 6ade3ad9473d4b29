"""DCGAN (Radford et al. 2015), sized from the dataset: the ``dcgan`` architecture and recipe.

G: a dense projection to a small s x s map, then stride-2 transposed convolutions, each doubling
the side and halving the channels, BatchNorm and ReLU between, tanh out. D mirrors it with
stride-2 convolutions and LeakyReLU(0.2), ending in one logit. A side of 28 starts from 7x7
(two doublings), 32 from 4x4 (three), 64 from 4x4 (four).
"""

from __future__ import annotations

import keras
from keras import layers

import ganflow

MIN_START = 4  # the smallest map G starts from


class DCGAN:
    def __init__(self, width: int = 32):
        self.width = width  # channels of D's first and G's last hidden layer

    def _plan(self, spec: ganflow.DataSpec) -> tuple[int, int]:
        """(doublings, starting side) for the dataset's image size."""
        if not spec.is_image:
            raise ganflow.UsageError(
                f"architecture dcgan needs images (height, width, channels); the dataset's "
                f"examples have shape {spec.shape}: use an architecture for points"
            )
        side, other, _ = spec.shape
        doublings = 0
        while side % 2 ** (doublings + 1) == 0 and side // 2 ** (doublings + 1) >= MIN_START:
            doublings += 1
        if side != other or doublings == 0:
            raise ganflow.UsageError(
                f"architecture dcgan needs square images with an even side of at least "
                f"{2 * MIN_START}, got {side}x{other}: pass --image-size (e.g. 32 or 64)"
            )
        return doublings, side // 2**doublings

    def build_generator(self, spec, latent_dim):
        doublings, start = self._plan(spec)
        channels = self.width * 2 ** (doublings - 1)
        g = keras.Sequential(name="generator")
        g.add(keras.Input((latent_dim,)))
        g.add(layers.Dense(start * start * channels, use_bias=False))
        g.add(layers.BatchNormalization())
        g.add(layers.ReLU())
        g.add(layers.Reshape((start, start, channels)))
        for _ in range(doublings - 1):
            channels //= 2
            g.add(layers.Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=False))
            g.add(layers.BatchNormalization())
            g.add(layers.ReLU())
        g.add(layers.Conv2DTranspose(spec.shape[-1], 4, strides=2, padding="same"))
        g.add(layers.Activation("tanh", dtype="float32"))
        return g

    def build_discriminator(self, spec):
        doublings, _ = self._plan(spec)
        d = keras.Sequential(name="discriminator")
        d.add(keras.Input(spec.shape))
        for i in range(doublings):
            d.add(layers.Conv2D(self.width * 2**i, 4, strides=2, padding="same"))
            d.add(layers.LeakyReLU(0.2))
        d.add(layers.Flatten())
        d.add(layers.Dense(1, dtype="float32"))
        return d


@ganflow.hookimpl
def ganflow_register_architectures(register):
    register("dcgan", DCGAN(), "strided (transposed) convolutions sized from the image size")


@ganflow.hookimpl
def ganflow_register_recipes(register):
    register(
        "dcgan",
        {
            "arch": "dcgan",
            "loss": "non-saturating",
            "dataset": "digits",
            "epochs": 100,
            "batch_size": 32,
            "d_steps": 1,
            "latent_dim": 64,
            "lr_g": 2e-4,
            "lr_d": 2e-4,
            "optimizer": "adam:beta1=0.5",
            "eval_every": 25,
        },
        "DCGAN on the bundled 32x32 digits, FID every 25 epochs; a few minutes on a laptop CPU",
    )
