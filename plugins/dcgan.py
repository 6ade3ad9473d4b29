"""DCGAN (Radford et al. 2015), sized from the dataset: the ``dcgan`` architecture, the
``dcgan`` recipe and its conditional twin ``cdcgan``.

G: a dense projection to a small s x s map, then stride-2 transposed convolutions, each doubling
the side and halving the channels, BatchNorm and ReLU between, tanh out. D mirrors it with
stride-2 convolutions and LeakyReLU(0.2), ending in one logit. A side of 28 starts from 7x7
(two doublings), 32 from 4x4 (three), 64 from 4x4 (four).

Settings (``--arch dcgan:sn,pack=2``): ``sn`` wraps every layer of D with weights in spectral
normalization (Miyato et al. 2018; ``ganflow.layers.SpectralNormalization``), as the paper's
reparametrization unless ``sigma_grad=false`` (Keras's update); ``pack`` makes D judge packs
of images stacked along the channels (PacGAN); ``width`` is G's last and D's first channel
count, ``d_width`` D's alone. Conditional (``--conditional``): G embeds the label and
concatenates it with z; D is a projection discriminator (Miyato & Koyama 2018): logit =
w . phi(x) + embed(y) . phi(x), phi(x) D's last features.
"""

from __future__ import annotations

import keras
from keras import layers

import ganflow
from ganflow.layers import packed, spectral_norm

MIN_START = 4  # the smallest map G starts from


EMBEDDING = 32  # size of G's label embedding


SETTINGS = {
    "width": ganflow.Setting(32, "channels of D's first and G's last hidden layer, doubling "
                             "(halving) at each resolution", minimum=1),
    "d_width": ganflow.Setting(0, "channels of D's first layer, doubling at each resolution; "
                               "0: width (PacGAN's Table 3 setting gives D a quarter of G's)",
                               minimum=0),
    "sn": ganflow.Setting(False, "spectral normalization on every layer of D"),
    "sigma_grad": ganflow.Setting(True, "spectral norm as the paper's reparametrization "
                                  "(differentiated through sigma(W)); false: Keras's update "
                                  "(W/sigma(W) written back into W)"),
    "pack": ganflow.Setting(1, "D judges packs of this many images, stacked along the "
                            "channels (PacGAN); 1: each image alone", minimum=1),
}


class DCGAN:
    def __init__(self, width: int = 32, d_width: int = 0, sn: bool = False,
                 sigma_grad: bool = True, pack: int = 1):
        self.width = width  # channels of G's last hidden layer
        self.d_width = d_width or width  # channels of D's first layer
        self.spectral_norm, self.sigma_grad, self.pack = sn, sigma_grad, pack

    def _weighted(self, layer):
        return spectral_norm(layer, self.spectral_norm, self.sigma_grad)

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

    def build_generator(self, spec, latent_dim, num_classes=None):
        doublings, start = self._plan(spec)
        # Under several replicas (--strategy mirrored), BatchNorm's statistics are the global
        # batch's: each replica's own would differ, and so would their moving averages.
        synchronized = ganflow.replicas() > 1
        channels = self.width * 2 ** (doublings - 1)
        stack = [layers.Dense(start * start * channels, use_bias=False),
                 layers.BatchNormalization(synchronized=synchronized), layers.ReLU(),
                 layers.Reshape((start, start, channels))]
        for _ in range(doublings - 1):
            channels //= 2
            stack += [layers.Conv2DTranspose(channels, 4, strides=2, padding="same",
                                             use_bias=False),
                      layers.BatchNormalization(synchronized=synchronized), layers.ReLU()]
        stack += [layers.Conv2DTranspose(spec.shape[-1], 4, strides=2, padding="same"),
                  layers.Activation("tanh", dtype="float32")]
        if num_classes is None:
            return keras.Sequential([keras.Input((latent_dim,)), *stack], name="generator")
        z = keras.Input((latent_dim,), name="z")
        label = keras.Input((), dtype="int32", name="label")
        x = layers.Concatenate()([z, layers.Embedding(num_classes, EMBEDDING)(label)])
        for layer in stack:
            x = layer(x)
        return keras.Model([z, label], x, name="generator")

    def build_discriminator(self, spec, num_classes=None):
        doublings, _ = self._plan(spec)
        if self.pack > 1 and num_classes is not None:
            raise ganflow.UsageError(f"--arch dcgan:pack={self.pack} packs unlabelled images "
                                     "(PacGAN); a conditional run's D judges each image with "
                                     "its label: drop pack or --conditional")
        features = []
        for i in range(doublings):
            features += [self._weighted(layers.Conv2D(self.d_width * 2**i, 4, strides=2,
                                                      padding="same")),
                         layers.LeakyReLU(0.2)]
        features.append(layers.Flatten())
        score = self._weighted(layers.Dense(1, dtype="float32"))
        if num_classes is None:
            height, width, channels = spec.shape
            return packed(keras.Sequential([keras.Input((height, width, self.pack * channels)),
                                            *features, score], name="discriminator"),
                          self.pack)
        image = keras.Input(spec.shape, name="x")
        label = keras.Input((), dtype="int32", name="label")
        phi = image
        for layer in features:
            phi = layer(phi)
        embedded = self._weighted(layers.Embedding(num_classes, phi.shape[-1]))(label)
        projection = layers.Dot(axes=1)([layers.Activation("linear", dtype="float32")(embedded),
                                         layers.Activation("linear", dtype="float32")(phi)])
        logit = layers.Add(dtype="float32")([score(phi), projection])
        return keras.Model([image, label], logit, name="discriminator")


@ganflow.hookimpl
def ganflow_register_architectures(register):
    register("dcgan", DCGAN, "strided (transposed) convolutions sized from the image size; "
             "dcgan:sn adds spectral normalization to D, dcgan:pack=2 packs D's inputs (PacGAN)",
             settings=SETTINGS)


DCGAN_RECIPE = {
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
    # Measured (docs/losses.md, the loss table; 3 seeds, 100 epochs): R1 on D's real-data gradient
    # halves the FID of the non-saturating loss (13.0 against 26.9), the best of the table.
    "regularizers": ["r1:gamma=1"],
    "eval_every": 25,
    # Metric windows of 8 of the digits' 56 steps an epoch (at batch 32), so that 8 steps run
    # per call into TensorFlow (with 10, only 2 fit): measured (bench/bench_run_cost.py), the
    # bare step is 1.04-1.08x as fast at 8 per call, in every round.
    "log_every": 8,
    # bfloat16 where the hardware computes in it (AVX-512 BF16 or AMX, a GPU of compute
    # capability 8+), float32 elsewhere. Measured on a CPU with AVX-512 BF16: this recipe's
    # step 1.45x as fast as in float32 (bench/bench_step.py), the tutorial's networks 1.48-1.57x
    # (bench/bench_speed.py); and in the loss table (3 seeds, 100 epochs) FID 12.26 (0.80)
    # against 12.99 (0.82) in float32, level.
    "precision": "auto",
}


@ganflow.hookimpl
def ganflow_register_recipes(register):
    register("dcgan", DCGAN_RECIPE,
             "DCGAN with R1 on the bundled 32x32 digits, FID every 25 epochs; minutes on a CPU")
    register("cdcgan", {**DCGAN_RECIPE, "conditional": True},
             "conditional DCGAN on the digits: G(z, y), a projection discriminator")
