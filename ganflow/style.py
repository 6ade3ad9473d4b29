"""StyleGAN2's layers (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN"), registered with Keras so that a generator made of them saves and loads: every
registered generator is loaded with this module imported (``ganflow.layers`` imports it).

- ``EqualizedDense``, ``EqualizedConv2D``: equalized learning rate. Weights are drawn from
  N(0, 1) (divided by the learning-rate multiplier) and scaled by He's constant at every call,
  so Adam's step is the same size for every layer; ``activation="lrelu"`` is the leaky ReLU
  (slope 0.2) times sqrt(2), the gain that keeps unit variance.
- ``ModulatedConv2D``: a convolution whose input channels are scaled per example by a style
  (an affine map of w, its bias starting at 1) and whose output channels are demodulated:
  divided by the norm of the modulated weight, so unit-variance inputs give unit-variance
  outputs. Computed as StyleGAN2's non-fused path does: scale the input, one ordinary
  convolution with the shared kernel, scale the output, instead of a grouped convolution with
  a kernel per example. Per-pixel noise (a learned strength per layer, starting at 0) is added
  before the bias: fresh N(0, 1) noise while training, a fixed map at inference, so a
  registered generator is a function of z.
- ``ConstantInput``: the learned 4x4 map the synthesis network starts from.
- ``MinibatchStddev``: D's minibatch standard deviation feature: the standard deviation of
  each feature over groups of ``group`` examples, averaged into one channel.
- ``MeanLatent``: tracks the mean of w while training (a moving average, beta 0.995, as
  StyleGAN2's ``w_avg``; a weight of G, so checkpointed and saved with it) and applies the
  truncation trick at inference, w_avg + psi (w - w_avg); ``truncation(generator, psi)``
  sets psi for a block of code.
- ``StyleMixing``: style-mixing regularization: while training, with probability ``p`` per
  example, the layers from a random cutoff on take their w from a second latent.
- ``RandomLatent``: that second latent, drawn while training.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import keras
from keras import layers, ops

PACKAGE = "ganflow"
SLOPE, GAIN = 0.2, math.sqrt(2.0)


def _activate(x, activation: str):
    return ops.leaky_relu(x, SLOPE) * GAIN if activation == "lrelu" else x


def _per_example_normal(batch, tail, seed_generator, dtype):
    """N(0, 1) of shape (batch, *tail): under a tf.distribute strategy, this replica's share
    of one device's draw for the global batch (``ganflow.devices.replica_share``)."""
    from ganflow.devices import replica_share

    return replica_share(
        lambda n: keras.random.normal((n, *tail), seed=seed_generator, dtype=dtype), batch)


def _normal(scale=1.0):
    return keras.initializers.RandomNormal(stddev=scale)


@keras.saving.register_keras_serializable(package=PACKAGE)
class EqualizedDense(layers.Layer):
    """A dense layer with equalized learning rate (``lr_multiplier``: StyleGAN2's mapping
    network learns at 0.01 of the rate)."""

    def __init__(self, units, lr_multiplier=1.0, bias_init=0.0, activation="linear",
                 use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units, self.lr_multiplier, self.bias_init = units, lr_multiplier, bias_init
        self.activation, self.use_bias = activation, use_bias

    def build(self, input_shape):
        fan_in = input_shape[-1]
        self.scale = self.lr_multiplier / math.sqrt(fan_in)
        self.kernel = self.add_weight(name="kernel", shape=(fan_in, self.units),
                                      initializer=_normal(1.0 / self.lr_multiplier))
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.units,),
                initializer=keras.initializers.Constant(self.bias_init / self.lr_multiplier))

    def call(self, x):
        y = ops.matmul(x, self.kernel * self.scale)
        if self.use_bias:
            y = y + self.bias * self.lr_multiplier
        return _activate(y, self.activation)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "lr_multiplier": self.lr_multiplier, "bias_init": self.bias_init,
                "activation": self.activation, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package=PACKAGE)
class EqualizedConv2D(layers.Layer):
    """A 'same' convolution with equalized learning rate; ``down`` halves the side first
    (2x2 average pooling, where StyleGAN2 blurs with [1, 3, 3, 1] and strides)."""

    def __init__(self, filters, kernel_size=3, activation="linear", use_bias=True, down=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.activation, self.use_bias, self.down = activation, use_bias, down

    def build(self, input_shape):
        fan_in = self.kernel_size * self.kernel_size * input_shape[-1]
        self.scale = 1.0 / math.sqrt(fan_in)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, input_shape[-1],
                                  self.filters), initializer=_normal())
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                        initializer="zeros")

    def call(self, x):
        if self.down:
            x = ops.average_pool(x, 2, 2)
        y = ops.conv(x, self.kernel * self.scale, padding="same")
        if self.use_bias:
            y = y + self.bias
        return _activate(y, self.activation)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        if self.down:
            height, width = height // 2, width // 2
        return (batch, height, width, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "activation": self.activation,
                "use_bias": self.use_bias, "down": self.down}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ModulatedConv2D(layers.Layer):
    """``[x, w] -> y``: a weight-modulated (and by default demodulated) 'same' convolution of
    x (b, H, W, C_in) styled by w (b, w_dim); ``up`` doubles the side first (bilinear, where
    StyleGAN2 uses a transposed convolution and a [1, 3, 3, 1] blur); ``noise`` adds per-pixel
    noise. ToRGB is one with kernel 1, no demodulation, no noise, linear."""

    def __init__(self, filters, kernel_size=3, demodulate=True, up=False, noise=True,
                 activation="lrelu", **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.demodulate, self.up, self.noise, self.activation = demodulate, up, noise, activation
        self.seed_generator = keras.random.SeedGenerator() if noise else None

    def build(self, input_shape):
        x_shape, w_shape = input_shape
        channels = x_shape[-1]
        self.affine = EqualizedDense(channels, bias_init=1.0, dtype=self.dtype_policy,
                                     name="affine")
        self.affine.build(w_shape)
        self.scale = 1.0 / math.sqrt(self.kernel_size * self.kernel_size * channels)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, channels, self.filters),
            initializer=_normal())
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        if self.noise:
            side = x_shape[1] * (2 if self.up else 1)
            self.noise_strength = self.add_weight(name="noise_strength", shape=(),
                                                  initializer="zeros")
            self.noise_const = self.add_weight(name="noise_const", shape=(1, side, side, 1),
                                               initializer=_normal(), trainable=False)

    def call(self, inputs, training=False):
        x, w = inputs
        styles = self.affine(w)  # (b, C_in)
        weight = self.kernel * self.scale
        x = x * ops.cast(styles[:, None, None, :], x.dtype)
        if self.up:
            x = ops.image.resize(x, (2 * x.shape[1], 2 * x.shape[2]), interpolation="bilinear")
        y = ops.conv(x, ops.cast(weight, x.dtype), padding="same")
        if self.demodulate:  # 1 / ||w_ijk s_i|| over (k, k, C_in), per example and output
            styles32 = ops.cast(styles, "float32")
            norms = ops.matmul(ops.square(styles32),
                               ops.sum(ops.square(ops.cast(weight, "float32")), axis=(0, 1)))
            y = y * ops.cast(ops.rsqrt(norms + 1e-8)[:, None, None, :], y.dtype)
        if self.noise:
            if training:
                batch, height, width = ops.shape(y)[0], y.shape[1], y.shape[2]
                noise = _per_example_normal(batch, (height, width, 1), self.seed_generator,
                                            y.dtype)
            else:
                noise = ops.cast(self.noise_const, y.dtype)
            y = y + noise * ops.cast(self.noise_strength, y.dtype)
        return _activate(y + ops.cast(self.bias, y.dtype), self.activation)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape[0]
        factor = 2 if self.up else 1
        return (batch, height * factor, width * factor, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "demodulate": self.demodulate,
                "up": self.up, "noise": self.noise, "activation": self.activation}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConstantInput(layers.Layer):
    """z (b, ...) -> the learned (side, side, channels) map, once per example."""

    def __init__(self, side, channels, **kwargs):
        super().__init__(**kwargs)
        self.side, self.channels = side, channels

    def build(self, input_shape):
        self.const = self.add_weight(name="const", shape=(1, self.side, self.side,
                                                          self.channels), initializer=_normal())

    def call(self, z):
        return ops.tile(ops.cast(self.const, self.compute_dtype), (ops.shape(z)[0], 1, 1, 1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.side, self.side, self.channels)

    def get_config(self):
        return {**super().get_config(), "side": self.side, "channels": self.channels}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MinibatchStddev(layers.Layer):
    """x (b, H, W, C) -> (b, H, W, C + 1): one more channel, the standard deviation of each
    feature over the example's group (``group`` consecutive examples, or the largest divisor
    of it that divides the batch), averaged over features and positions."""

    def __init__(self, group=4, **kwargs):
        super().__init__(**kwargs)
        self.group = group

    def call(self, x):
        batch = ops.shape(x)[0]
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        group = 1
        for divisor in sorted(d for d in range(2, self.group + 1) if self.group % d == 0):
            group = ops.where(batch % divisor == 0, divisor, group)
        # Groups of consecutive examples (StyleGAN2 strides them: x[i::b/group]); either way
        # a group is a random draw of the shuffled batch, and this way a replica's groups are
        # those one device forms on the global batch.
        y = ops.reshape(ops.cast(x, "float32"), (-1, group, height, width, channels))
        y = y - ops.mean(y, axis=1, keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(y), axis=1) + 1e-8)  # (b / group, H, W, C)
        std = ops.repeat(ops.mean(std, axis=(1, 2, 3)), group, axis=0)
        std = ops.tile(std[:, None, None, None], (1, height, width, 1))
        return ops.concatenate([x, ops.cast(std, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)

    def get_config(self):
        return {**super().get_config(), "group": self.group}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanLatent(layers.Layer):
    """w -> w while training, tracking w's mean; w_avg + psi (w - w_avg) at inference.

    ``w_avg`` moves towards each training batch's mean w by (1 - beta); ``psi`` is 1 (no
    truncation) unless set by ``truncation``. Both are weights of G: checkpointed with it,
    saved with the registered model."""

    def __init__(self, beta=0.995, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def build(self, input_shape):
        self.w_avg = self.add_weight(name="w_avg", shape=(input_shape[-1],),
                                     initializer="zeros", trainable=False, aggregation="mean")
        self.psi = self.add_weight(name="psi", shape=(), initializer="ones", trainable=False,
                                   aggregation="only_first_replica")

    def call(self, w, training=False):
        if training:
            mean = ops.mean(ops.cast(w, "float32"), axis=0)
            self.w_avg.assign(mean + self.beta * (self.w_avg - mean))
            return w
        w_avg = ops.cast(self.w_avg, w.dtype)
        return w_avg + ops.cast(self.psi, w.dtype) * (w - w_avg)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomLatent(layers.Layer):
    """z -> a fresh N(0, 1) latent of z's shape while training (style mixing's second
    latent); z itself at inference."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, z, training=False):
        if not training:
            return z
        return _per_example_normal(ops.shape(z)[0], z.shape[1:], self.seed_generator, z.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class StyleMixing(layers.Layer):
    """[ws, ws2] (each (b, layers, w_dim)) -> ws, in which, while training, with probability
    ``p`` per example, the layers from a cutoff drawn uniformly in 1..layers-1 take ws2's w."""

    def __init__(self, p=0.9, **kwargs):
        super().__init__(**kwargs)
        self.p = p
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, inputs, training=False):
        ws, ws2 = inputs
        count = ws.shape[1]
        if not training or not self.p or count < 2:
            return ws
        draws = _per_example_normal(ops.shape(ws)[0], (2,), self.seed_generator, "float32")
        uniform = ops.erf(draws / GAIN) * 0.5 + 0.5  # two U(0, 1) per example
        cutoff = 1 + ops.cast(uniform[:, 0] * (count - 1), "int32")  # in 1..count - 1
        mixed = uniform[:, 1] < self.p
        cutoff = ops.where(mixed, cutoff, count)
        keep = ops.arange(count)[None, :] < cutoff[:, None]
        return ops.where(keep[:, :, None], ws, ws2)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "p": self.p}


def mean_latents(model) -> list[MeanLatent]:
    """The ``MeanLatent`` layers of ``model``, at any depth."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, MeanLatent)]


@contextmanager
def truncation(model, psi: float):
    """Sample ``model`` with the truncation trick at ``psi`` inside the block (1: none; 0:
    every z gives the mean latent's image). Refused for a generator without a mean latent."""
    found = mean_latents(model)
    if not found:
        raise ValueError("this generator has no mean latent to truncate towards (StyleGAN2's "
                         "w_avg): truncation needs the stylegan2 architecture")
    before = [float(layer.psi.numpy()) for layer in found]
    for layer in found:
        layer.psi.assign(psi)
    try:
        yield model
    finally:
        for layer, value in zip(found, before):
            layer.psi.assign(value)
