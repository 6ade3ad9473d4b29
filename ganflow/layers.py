"""Layers for architecture plugins beyond Keras's own, registered with Keras so that a
generator using them saves and loads (``ganflow sample``, ``mlflow.pyfunc.load_model``):
every registered generator is loaded with this module imported.

- ``SelfAttention``: SAGAN's non-local block (Zhang et al. 2019), as BigGAN uses it.
- ``GlobalSumPooling2D``: the sum over positions that ends SNGAN's and BigGAN's
  discriminators (a mean would scale the last layer's Lipschitz constant by 1/(H*W)).
- ``SpectralNormalization``: Keras's, mended for mixed precision and integer labels;
  ``spectral_norm(layer, on)`` wraps a layer in it when ``on``.
- ``packed(discriminator, pack)``: PacGAN's discriminator of packs (Lin et al. 2018).
- StyleGAN2's layers, in ``ganflow.style`` (imported here so that they are registered too).
"""

from __future__ import annotations

import keras
from keras import layers, ops

import ganflow.style  # noqa: F401  registers StyleGAN2's layers with Keras

PACKAGE = "ganflow"


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpectralNormalization(layers.SpectralNormalization):
    """Keras's ``SpectralNormalization`` (Miyato et al. 2018: the weight divided by its
    largest singular value, estimated by a power iteration a training call), with two things
    mended for mixed precision and labels:

    - Keras's computes the normalized weight inside the wrapper's autocast, so under a
      bfloat16 policy it rounded D's float32 weights to bfloat16 at every training call (Adam's
      smaller updates lost); here the wrapper does not autocast (the wrapped layer still
      computes in the policy's dtype).
    - Keras's casts the output to the input's dtype: a float32 logit layer wrapped after
      bfloat16 features gave a bfloat16 logit, and an ``Embedding`` of integer labels gave
      integers (0 for the small values, so a projection discriminator ignored the label).
      Here the output is the wrapped layer's own, and integer inputs reach it as float32 (an
      ``Embedding`` casts them back).

    And, by default (``sigma_grad``), the paper's reparametrization instead of Keras's
    update. Keras's writes W / sigma(W) back into W at every training call, so the gradient
    is taken at the normalized weight and nothing flows through sigma; here W stays as the
    optimizer moves it and the layer computes with W / sigma(W), differentiated through sigma
    (u and v held constant, as Miyato et al.), which takes from the gradient its part along
    the top singular direction. Measured (docs/losses.md): the dcgan recipe with spectral
    norm in D scores FID about 17 so, about 73 with Keras's update (``sigma_grad=False``).
    """

    def __init__(self, layer, power_iterations=1, sigma_grad=True, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(layer, power_iterations=power_iterations, **kwargs)
        self.sigma_grad = sigma_grad

    def _normalized(self):
        """(u after one more power iteration, W / sigma(W)); W itself for an all-zero W."""
        return ops.cond(ops.all(ops.equal(self.kernel.value, 0)),
                        lambda: (self.vector_u.value, self.kernel.value),
                        self.normalized_weights)

    def call(self, inputs, training=False):
        if not keras.backend.is_float_dtype(inputs.dtype):
            inputs = ops.cast(inputs, "float32")
        if not (training or self.sigma_grad):  # Keras's W is W / sigma(W) since training
            return self.layer(inputs)
        new_vector_u, new_kernel = self._normalized()
        if training:
            self.vector_u.assign(new_vector_u)
        if self.sigma_grad:  # the paper's: W stays; the layer computes with W / sigma(W)
            with keras.StatelessScope(state_mapping=[(self.kernel, new_kernel)]):
                return self.layer(inputs)
        self.kernel.assign(new_kernel)  # Keras's: W / sigma(W) written back into W
        return self.layer(inputs)

    def get_config(self):
        return {**super().get_config(), "sigma_grad": self.sigma_grad}


class Packed(keras.Model):
    """``inner`` scores packs of ``pack`` consecutive examples, concatenated along the last
    axis (a point's coordinates, an image's channels), with one logit each; every example
    gets its pack's logit. A batch whose size is not a multiple of ``pack`` is padded by
    repeating its own examples."""

    def __init__(self, inner, pack: int, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.pack = inner, pack

    def call(self, x, training=False):
        n, rest = ops.shape(x)[0], tuple(x.shape[1:])
        padded = n + (-n) % self.pack
        x = ops.tile(x, (self.pack,) + (1,) * len(rest))[:padded]
        packs = ops.moveaxis(ops.reshape(x, (-1, self.pack, *rest)), 1, -2)
        logits = self.inner(ops.reshape(packs, (-1, *rest[:-1], self.pack * rest[-1])),
                            training=training)
        return ops.repeat(logits, self.pack, axis=0)[:n]


def packed(discriminator, pack: int):
    """``discriminator`` (which takes ``pack`` examples concatenated along the last axis)
    judging packs of ``pack`` examples (PacGAN); itself when ``pack`` is 1. A generator that
    drops modes makes packs less varied than real ones, which D can see and a per-example D
    cannot."""
    return Packed(discriminator, pack, name="discriminator") if pack > 1 else discriminator


def spectral_norm(layer, on: bool = True, sigma_grad: bool = True):
    """``layer`` wrapped in ``SpectralNormalization`` when ``on`` (``sigma_grad``: the
    paper's form, else Keras's), else as it is."""
    return SpectralNormalization(layer, sigma_grad=sigma_grad) if on else layer


@keras.saving.register_keras_serializable(package=PACKAGE)
class SelfAttention(layers.Layer):
    """x + gamma * o(softmax(f(x) g(x)^T) h(x)), over the feature map's positions.

    f, g are 1x1 convolutions to C/8 channels, h to C/2 and o back to C (BigGAN's sizes);
    g and h are max-pooled 2x2 first, so attention costs a quarter of the full map's. gamma
    starts at 0: the block begins as the identity and learns how much to attend.
    ``spectral_norm`` wraps the four convolutions (SAGAN and BigGAN do, in G and D).
    """

    def __init__(self, spectral_norm: bool = False, kernel_initializer="glorot_uniform",
                 sigma_grad: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.spectral_norm, self.sigma_grad = spectral_norm, sigma_grad
        # Kept as its config: one unseeded initializer object gives the same values at every
        # call in Keras 3, which would start f and g (same shape) equal.
        self.kernel_initializer = keras.initializers.serialize(
            keras.initializers.get(kernel_initializer))

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels < 8:
            raise ValueError(f"self-attention needs at least 8 channels, got {channels}")

        def conv(filters):
            return spectral_norm(layers.Conv2D(filters, 1, use_bias=False,
                                           kernel_initializer=keras.initializers.get(
                                               self.kernel_initializer),
                                           dtype=self.dtype_policy), self.spectral_norm,
                                 self.sigma_grad)

        self.f, self.g = conv(channels // 8), conv(channels // 8)
        self.h, self.o = conv(channels // 2), conv(channels)
        self.pool = layers.MaxPooling2D(2, dtype=self.dtype_policy)
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")
        height, width = input_shape[1], input_shape[2]
        self.f.build(input_shape)
        self.g.build(input_shape)
        self.h.build(input_shape)
        self.o.build((None, height, width, channels // 2))

    def call(self, x, training=None):
        batch = ops.shape(x)[0]
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        positions, pooled = height * width, (height // 2) * (width // 2)
        query = ops.reshape(self.f(x, training=training), (batch, positions, channels // 8))
        key = ops.reshape(self.pool(self.g(x, training=training)),
                          (batch, pooled, channels // 8))
        value = ops.reshape(self.pool(self.h(x, training=training)),
                            (batch, pooled, channels // 2))
        # The softmax in float32 under mixed precision: its sums are over every position.
        scores = ops.cast(ops.matmul(query, ops.transpose(key, (0, 2, 1))), "float32")
        attention = ops.cast(ops.softmax(scores, axis=-1), x.dtype)
        attended = ops.reshape(ops.matmul(attention, value),
                               (batch, height, width, channels // 2))
        return x + ops.cast(self.gamma, x.dtype) * self.o(attended, training=training)

    def get_config(self):
        return {**super().get_config(), "spectral_norm": self.spectral_norm,
                "kernel_initializer": self.kernel_initializer, "sigma_grad": self.sigma_grad}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalSumPooling2D(layers.Layer):
    """(batch, H, W, C) -> (batch, C): the sum over positions."""

    def call(self, x):
        return ops.sum(x, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
