"""StyleGAN2 (Karras et al. 2020): the ``stylegan2`` architecture, the ``pl`` regularizer
(lazy path-length regularization) and the ``stylegan2`` recipe.

G is a mapping network (z, 2nd-moment normalized, through ``mapping`` dense layers at 0.01
of the learning rate, to w; a conditional one concatenates a normalized class embedding to
z) and a synthesis network: a learned 4x4 constant, then per resolution two modulated,
demodulated 3x3 convolutions with per-pixel noise (the first doubles the side), and a ToRGB
whose image is added to the upsampled image so far (the skip generator). Each modulated
layer takes its own w, the same one unless style mixing gave the later layers a second
latent's. Between them, ``MeanLatent`` tracks w's mean while training and truncates towards
it at inference. The two networks are sub-models named ``mapping`` and ``synthesis`` (the
path-length regularizer differentiates the synthesis network with respect to w).

D is the residual discriminator: FromRGB, then per resolution two 3x3 convolutions (the
second halves the side) beside a 1x1 shortcut that halves it too, summed and scaled by
sqrt(1/2); then at 4x4 the minibatch standard deviation, a 3x3 convolution, a dense layer
and the logit (conditional: projected on a class embedding, as StyleGAN2-ADA's ``cmap``).
Every layer of both has equalized learning rate (``ganflow.style``).

Channels per resolution: min(cmax, cbase / side), StyleGAN2-ADA's ``--cbase``/``--cmax``
(defaults the paper's: 32768 and 512).

Differences from NVlabs' code, stated: resampling is bilinear (G) and 2x2 average pooling
(D) instead of the [1, 3, 3, 1] FIR filter; style mixing draws its cutoff per example; the
learning rates and Adam betas are not corrected for the lazy regularizers' interval.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

import ganflow
from ganflow.style import (ConstantInput, EqualizedConv2D, EqualizedDense, MeanLatent,
                           MinibatchStddev, ModulatedConv2D, RandomLatent, StyleMixing)

SETTINGS = {
    "cbase": ganflow.Setting(32768, "channels at a resolution: min(cmax, cbase / side)",
                             minimum=4),
    "cmax": ganflow.Setting(512, "the most channels any resolution has", minimum=1),
    "w_dim": ganflow.Setting(512, "the size of w (and of the mapping network's layers)",
                             minimum=1),
    "mapping": ganflow.Setting(8, "layers of the mapping network", minimum=1),
    "mixing": ganflow.Setting(0.9, "style-mixing probability while training (0: off)",
                              minimum=0.0, maximum=1.0),
    "mbstd": ganflow.Setting(4, "minibatch standard deviation group size (1: off)",
                             minimum=1),
}


class StyleGAN2:
    def __init__(self, cbase=32768, cmax=512, w_dim=512, mapping=8, mixing=0.9, mbstd=4):
        self.cbase, self.cmax, self.w_dim = cbase, cmax, w_dim
        self.mapping_layers, self.mixing, self.mbstd = mapping, mixing, mbstd

    def _side(self, spec: ganflow.DataSpec) -> int:
        if not spec.is_image:
            raise ganflow.UsageError(
                f"architecture stylegan2 needs images (height, width, channels); the "
                f"dataset's examples have shape {spec.shape}: use an architecture for points")
        side, other, _ = spec.shape
        if side != other or side < 8 or side & (side - 1):
            raise ganflow.UsageError(
                f"architecture stylegan2 needs square images whose side is a power of 2 from "
                f"8, got {side}x{other}: pass --image-size 32 (or 64, 128, 256)")
        return side

    def channels(self, side: int) -> int:
        return max(1, min(self.cmax, self.cbase // side))

    # -- G ----------------------------------------------------------------------------------

    def _mapping(self, latent_dim, num_classes):
        z = keras.Input((latent_dim,), name="z")
        x = _normalized(z)
        inputs = z
        if num_classes:
            label = keras.Input((), dtype="int32", name="label")
            embedded = layers.Embedding(num_classes, self.w_dim)(label)
            x = layers.Concatenate()([x, _normalized(embedded)])
            inputs = [z, label]
        for _ in range(self.mapping_layers):
            x = EqualizedDense(self.w_dim, lr_multiplier=0.01, activation="lrelu")(x)
        return keras.Model(inputs, x, name="mapping")

    def _synthesis(self, side, colors):
        count = 2 * int(math.log2(side)) - 2  # one w per modulated layer (ToRGB shares)
        ws = keras.Input((count, self.w_dim), name="ws")
        x = ConstantInput(4, self.channels(4))(ws)
        x = ModulatedConv2D(self.channels(4))([x, ws[:, 0]])
        image = _to_rgb(colors, x, ws[:, 1])
        index, resolution = 1, 8
        while resolution <= side:
            x = ModulatedConv2D(self.channels(resolution), up=True)([x, ws[:, index]])
            x = ModulatedConv2D(self.channels(resolution))([x, ws[:, index + 1]])
            image = layers.Add()([layers.UpSampling2D(2, interpolation="bilinear")(image),
                                  _to_rgb(colors, x, ws[:, index + 2])])
            index, resolution = index + 2, resolution * 2
        out = layers.Activation("linear", dtype="float32")(image)
        return keras.Model(ws, out, name="synthesis")

    def build_generator(self, spec, latent_dim, num_classes=None):
        side = self._side(spec)
        mapping = self._mapping(latent_dim, num_classes)
        synthesis = self._synthesis(side, spec.shape[-1])
        count = synthesis.input.shape[1]
        z = keras.Input((latent_dim,), name="z")
        label = keras.Input((), dtype="int32", name="label") if num_classes else None

        def mapped(noise):
            return mapping(noise if label is None else [noise, label])

        w = MeanLatent(name="mean_latent")(mapped(z))
        ws = layers.RepeatVector(count)(w)
        if self.mixing:
            other = layers.RepeatVector(count)(mapped(RandomLatent()(z)))
            ws = StyleMixing(self.mixing)([ws, other])
        inputs = z if label is None else [z, label]
        return keras.Model(inputs, synthesis(ws), name="generator")

    # -- D ----------------------------------------------------------------------------------

    def build_discriminator(self, spec, num_classes=None):
        side = self._side(spec)
        image = keras.Input(spec.shape, name="x")
        x = EqualizedConv2D(self.channels(side), 1, activation="lrelu")(image)
        while side > 4:
            shortcut = EqualizedConv2D(self.channels(side // 2), 1, use_bias=False,
                                       down=True)(x)
            x = EqualizedConv2D(self.channels(side), 3, activation="lrelu")(x)
            x = EqualizedConv2D(self.channels(side // 2), 3, activation="lrelu", down=True)(x)
            x = layers.Rescaling(math.sqrt(0.5))(layers.Add()([shortcut, x]))
            side //= 2
        if self.mbstd > 1:
            x = MinibatchStddev(self.mbstd)(x)
        x = EqualizedConv2D(self.channels(4), 3, activation="lrelu")(x)
        x = EqualizedDense(self.channels(4), activation="lrelu")(layers.Flatten()(x))
        if not num_classes:
            return keras.Model(image, EqualizedDense(1, dtype="float32")(x),
                               name="discriminator")
        label = keras.Input((), dtype="int32", name="label")
        dim = self.channels(4)
        features = EqualizedDense(dim, dtype="float32")(x)
        embedded = _normalized(layers.Embedding(num_classes, dim, dtype="float32")(label))
        logit = layers.Rescaling(1.0 / math.sqrt(dim), dtype="float32")(
            layers.Dot(axes=1, dtype="float32")([features, embedded]))
        return keras.Model([image, label], logit, name="discriminator")


def _normalized(x):
    """x / sqrt(mean(x^2)) per example: StyleGAN2's 2nd-moment normalization."""
    size = x.shape[-1]
    return layers.Rescaling(math.sqrt(size), dtype=x.dtype)(
        layers.UnitNormalization(axis=-1, dtype=x.dtype)(x))


def _to_rgb(colors, x, w):
    return ModulatedConv2D(colors, 1, demodulate=False, noise=False, activation="linear")([x, w])


# -- path-length regularization -------------------------------------------------------------


def path_lengths(synthesis, ws, y):
    """||J_w^T y|| per example: the Jacobian of ``synthesis`` at ``ws`` (b, layers, w_dim)
    applied to image-space directions ``y``, the squared norm averaged over the layers (as
    StyleGAN2: sqrt(mean over layers of sum over w_dim)). Float32, (b,)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(ws)
        images = ops.cast(synthesis(ws, training=True), "float32")
        projected = ops.sum(images * y)
    gradient = ops.cast(tape.gradient(projected, ws), "float32")
    return ops.sqrt(ops.mean(ops.sum(ops.square(gradient), axis=2), axis=1))


class PathLength(ganflow.Regularizer):
    """weight * E[(||J_w^T y|| - a)^2], y ~ N(0, I) / sqrt(H W), a the lengths' moving mean
    (decay ``decay``; plugin state, checkpointed), on a ``1/shrink`` share of the batch.

    Under a tf.distribute strategy each replica moves its own a with its own lengths, as
    each process of StyleGAN2-ADA's multi-GPU training does (a lazy regularizer runs inside
    a ``tf.cond``, where replicas cannot synchronize); the checkpoint keeps, and a resumed run
    starts every replica from, their mean, which follows the one-device recursion exactly
    (the update is linear)."""

    network = "generator"

    def __init__(self, weight=2.0, decay=0.01, shrink=2):
        self.weight, self.decay, self.shrink = weight, decay, shrink
        self.state = {"pl_mean": keras.Variable(0.0, trainable=False, name="pl_mean",
                                                synchronization="on_read",
                                                aggregation="mean")}

    def __call__(self, step):
        mapping, synthesis = parts(step.generator)
        # Every shrink-th example: under a strategy, the replicas' shares together are the
        # ones one device takes of the global batch. (y comes from the plugins' seeds, which
        # differ per replica.)
        z = step.z[::self.shrink]
        w = mapping([z, step.labels[::self.shrink]] if step.conditional else z, training=True)
        ws = ops.repeat(w[:, None, :], synthesis.input.shape[1], axis=1)
        height, width = synthesis.output.shape[1], synthesis.output.shape[2]
        shape = (ops.shape(z)[0], *synthesis.output.shape[1:])
        y = keras.random.normal(shape, seed=step.seed_generator) / math.sqrt(height * width)
        lengths = path_lengths(synthesis, ws, y)
        pl_mean = self.state["pl_mean"]
        updated = pl_mean + self.decay * (ops.stop_gradient(ops.mean(lengths)) - pl_mean)
        pl_mean.assign(updated)
        return self.weight * ops.mean(ops.square(lengths - updated))

    def metrics(self, step):
        return {"pl/mean": ops.convert_to_tensor(self.state["pl_mean"])}


def parts(generator):
    """(mapping, synthesis): a StyleGAN-style generator's two sub-models."""
    try:
        return generator.get_layer("mapping"), generator.get_layer("synthesis")
    except ValueError:
        raise ganflow.UsageError(
            "--regularizer pl needs a generator made of a mapping and a synthesis network "
            "(sub-models named 'mapping' and 'synthesis'): use --arch stylegan2") from None


@ganflow.hookimpl
def ganflow_register_architectures(register):
    register("stylegan2", StyleGAN2, "StyleGAN2: mapping network, modulated convolutions, "
             "noise, skip G, residual D, minibatch stddev, equalized lr; truncation at sampling",
             settings=SETTINGS)


@ganflow.hookimpl
def ganflow_register_regularizers(register):
    register("pl", PathLength, "on G: StyleGAN2's path-length regularization, weight E(||J_w^T "
             "y|| - a)^2 (stylegan2 architecture)",
             settings={
                 "weight": ganflow.Setting(2.0, "the penalty's weight", minimum=0.0),
                 "decay": ganflow.Setting(0.01, "the moving mean's rate", minimum=0.0,
                                          maximum=1.0),
                 "shrink": ganflow.Setting(2, "run on 1/shrink of the batch", minimum=1),
             })


# StyleGAN2 as the paper trains it (config F: non-saturating loss, lazy R1 every 16 D updates,
# lazy path length every 4 G updates, Adam 0.0025 with betas 0 and 0.99, style mixing 0.9,
# an EMA of G with the paper's 10-kimg half-life at batch 32, 20 kimg at 64: 0.5^(64/20000)
# = 0.998), with ADA (StyleGAN2-ADA's default), at the digits' scale on a CPU: 64 channels
# at most (the paper's 512), w of 128. Measured (bench/bench_step.py, bfloat16), a step takes
# about 0.53 CPU-s, so 24 epochs (672 steps) cost about what the dcgan recipe's 100 do.
STYLEGAN2_RECIPE = {
    "arch": "stylegan2:cbase=1024,cmax=64,w_dim=128",
    "loss": "non-saturating",
    "dataset": "digits",
    "epochs": 24,
    "batch_size": 64,
    "d_steps": 1,
    "latent_dim": 128,
    "lr_g": 0.0025,
    "lr_d": 0.0025,
    "optimizer": "adam:beta1=0.0,beta2=0.99",
    "regularizers": ["r1:gamma=0.01,every=16", "pl:every=4"],
    "augment": ["ada"],
    "ema": 0.998,
    "eval_every": 8,
    "precision": "auto",
}


@ganflow.hookimpl
def ganflow_register_recipes(register):
    register("stylegan2", STYLEGAN2_RECIPE, "StyleGAN2 (config F) with ADA on the digits: "
             "lazy R1 and path length, style mixing, EMA of G")
