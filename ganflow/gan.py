"""GAN(keras.Model): each train_step is k discriminator updates, then one generator update.

Each batch holds k*m real examples: update i of D sees slice i (m fresh real examples) and m
fresh noise samples; G's update draws another m noise samples. Noise comes from the model's
own SeedGenerator, so a seed reproduces a run.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

LOG_4 = 2.0 * math.log(2.0)

METRIC_NAMES = ("d_loss", "g_loss", "d_real", "d_fake", "value", "jsd_estimate")


def value_function(real_logits, fake_logits):
    """The batch estimate of V(G, D) = E[log D(x)] + E[log(1 - D(G(z)))], from logits.

    log D = -softplus(-s) and log(1 - D) = -softplus(s): exact and stable for any logit.
    """
    return -ops.mean(ops.softplus(-real_logits)) - ops.mean(ops.softplus(fake_logits))


class GAN(keras.Model):
    """A generator and a discriminator trained against each other.

    ``call(z)`` generates. ``compile(d_optimizer, g_optimizer, loss)`` takes a ``ganflow.Loss``.
    ``fit`` on a dataset of batches of ``d_steps * m`` real examples reports d_loss, g_loss,
    d_real = mean D(x), d_fake = mean D(G(z)), value = V on the batch and
    jsd_estimate = (V + 2 log 2) / 2 (the JSD that V implies if D were optimal).
    """

    def __init__(self, generator, discriminator, latent_dim, d_steps=1, seed=None, ema=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = int(latent_dim)
        self.d_steps = int(d_steps)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}
        self.ema = ema
        self.ema_generator = None
        if ema is not None:
            if not 0.0 < ema < 1.0:
                raise ValueError(f"ema must be in (0, 1), got {ema}")
            # A copy of the generator whose weights follow an exponential moving average of G's.
            self.ema_generator = keras.models.clone_model(generator)
            self.ema_generator.set_weights(generator.get_weights())

    @property
    def sampling_generator(self):
        """The generator to sample from: the EMA copy when ``ema`` is set, else G itself."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def compile(self, d_optimizer, g_optimizer, loss, jit_compile="auto", **kwargs):
        super().compile(jit_compile=jit_compile, **kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.gan_loss = loss
        # Building the optimizers here, against their own variables, is what tf.distribute and
        # XLA need: no variable may be created inside the compiled step. One forward pass first
        # builds networks that create their weights lazily (subclassed models).
        self.discriminator(self.generator(ops.zeros((1, self.latent_dim))))
        d_optimizer.build(self.discriminator.trainable_variables)
        g_optimizer.build(self.generator.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape):
        if not self.generator.built:
            self.generator.build(input_shape)

    def call(self, z, training=False):
        return self.generator(z, training=training)

    def noise(self, m):
        return keras.random.normal((m, self.latent_dim), seed=self.seed_generator)

    def train_step(self, real):
        if isinstance(real, (tuple, list)):  # (images, labels) from a labelled pipeline
            real = real[0]
        m = ops.shape(real)[0] // self.d_steps
        # Keras sums gradients across replicas; scaling by 1/replicas makes that a mean.
        scale = 1.0 / tf.distribute.get_strategy().num_replicas_in_sync
        loss = self.gan_loss

        for i in range(self.d_steps):
            real_i = real[i * m : (i + 1) * m]
            z = self.noise(m)
            with tf.GradientTape() as tape:
                fake = self.generator(z, training=True)
                real_logits = self.discriminator(real_i, training=True)
                fake_logits = self.discriminator(fake, training=True)
                d_loss = loss.discriminator_loss(real_logits, fake_logits)
                if loss.penalty is not None:
                    d_loss = d_loss + loss.penalty(self.discriminator, real_i, fake)
                scaled = d_loss * scale
            grads = tape.gradient(scaled, self.discriminator.trainable_variables)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_variables))

        z = self.noise(m)
        with tf.GradientTape() as tape:
            g_logits = self.discriminator(self.generator(z, training=True), training=True)
            g_loss = loss.generator_loss(g_logits)
            scaled = g_loss * scale
        # A generator without trainable weights (a fixed P_G, as in `ganflow theory`) stays put.
        if self.generator.trainable_variables:
            grads = tape.gradient(scaled, self.generator.trainable_variables)
            self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables))
        if self.ema_generator is not None:
            self._update_ema()

        # Reported from the last D update, on the logits it was trained on.
        value = value_function(real_logits, fake_logits)
        updates = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": ops.mean(ops.sigmoid(real_logits)),
            "d_fake": ops.mean(ops.sigmoid(fake_logits)),
            "value": value,
            "jsd_estimate": (value + LOG_4) / 2.0,
        }
        for name, tensor in updates.items():
            self.trackers[name].update_state(tensor)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def _update_ema(self):
        # Warm-up as in tf.train.ExponentialMovingAverage(num_updates=t), t = G updates so far:
        # early on the average forgets its random start faster, so early samples are not a
        # blur of the initial G.
        t = ops.cast(self.g_optimizer.iterations, "float32")
        decay = ops.minimum(self.ema, (1.0 + t) / (10.0 + t))
        for average, weight in zip(self.ema_generator.weights, self.generator.weights):
            average.assign(decay * average + (1.0 - decay) * ops.cast(weight, average.dtype))
