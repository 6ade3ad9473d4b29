"""The training-step API: what losses and regularizers receive, lazy regularizers, the check
before training, labels, float32, and the old two-method losses on the new step."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import ganflow
from ganflow.data import training_pipeline
from ganflow.gan import GAN, StepCheckError
from ganflow_plugins.losses import NonSaturatingLoss
from ganflow_plugins.regularizers import R1, R2

from test_gan import LATENT, SHAPE, RecordingDiscriminator, numbered_source, tiny_generator

PIXELS = int(np.prod(SHAPE))


def linear_discriminator(dtype=None):
    return keras.Sequential([keras.Input(SHAPE), layers.Flatten(dtype=dtype),
                             layers.Dense(1, use_bias=False, dtype=dtype)])


class ZeroLoss(ganflow.StepLoss):
    """A loss with zero gradient everywhere: only regularizers move the weights."""

    def d_loss(self, step):
        return 0.0 * ops.mean(step.real_logits) + 0.0 * ops.mean(step.fake_logits)

    def g_loss(self, step):
        return 0.0 * ops.mean(step.fake_logits)


def compile_gan(loss, discriminator=None, regularizers=(), d_steps=1, lr=1e-3, jit=False,
                run_eagerly=False, generator=None, num_classes=None, optimizer=None):
    keras.utils.set_random_seed(0)
    # Networks are made after seeding: Keras draws an initializer's seed when it is created.
    gan = GAN((generator or tiny_generator)(), (discriminator or linear_discriminator)(),
              LATENT, d_steps, seed=0, num_classes=num_classes)
    make = optimizer or (lambda: keras.optimizers.SGD(lr))
    gan.compile(make(), make(), loss, regularizers=regularizers, jit_compile=jit,
                run_eagerly=run_eagerly)
    return gan


@pytest.mark.parametrize("jit", [False, True])
def test_lazy_r1_on_a_linear_d_matches_its_closed_form(jit):
    # D(x) = w.x, so grad_x D = w on every example and R1 = gamma / 2 ||w||^2. With a loss of
    # zero gradient and SGD, an update where R1 runs (every 2nd, times 2) is
    # w <- w (1 - lr * 2 * gamma); the others leave w alone.
    gamma, lr, every, steps = 3.0, 0.01, 2, 5
    r1 = ganflow.Regularization("r1", R1(gamma), every=every)
    gan = compile_gan(ZeroLoss(), regularizers=[r1], lr=lr, jit=jit)
    w0 = gan.discriminator.get_weights()[0].copy()
    history = gan.fit(training_pipeline(numbered_source(40), 4, seed=0), epochs=1,
                      steps_per_epoch=steps, verbose=0)
    ran = len(range(0, steps, every))  # D updates 0, 2 and 4
    factor = 1 - lr * every * gamma
    np.testing.assert_allclose(gan.discriminator.get_weights()[0], w0 * factor**ran, rtol=1e-5)
    # reg/r1 is the mean of R1's own value (not times 2) over the updates it ran in.
    values = [gamma / 2 * np.sum(w0**2) * factor ** (2 * i) for i in range(ran)]
    assert history.history["reg/r1"][-1] == pytest.approx(np.mean(values), rel=1e-5)
    # d_loss, the total D minimizes, is 2 R1 in the updates R1 ran in and 0 in the others.
    assert history.history["d_loss"][-1] == pytest.approx(every * sum(values) / steps, rel=1e-5)


def test_r1_and_r2_values_on_a_linear_d():
    d = linear_discriminator()
    d.build((None, *SHAPE))
    w = d.get_weights()[0]
    step = ganflow.Step.forward("discriminator", generator=tiny_generator(), discriminator=d,
                                real=tf.random.normal((6, *SHAPE)),
                                z=tf.random.normal((6, LATENT)))
    expected = 2.5 * np.sum(w**2)  # gamma / 2 ||w||^2 whatever the examples
    assert float(R1(5.0)(step)) == pytest.approx(expected, rel=1e-5)
    assert float(R2(5.0)(step)) == pytest.approx(expected, rel=1e-5)


class RelativisticAverage(ganflow.StepLoss):
    """RaGAN: the generator's loss reads the real logits of its own update."""

    generator_uses_real = True

    def d_loss(self, step):
        real, fake = step.real_logits, step.fake_logits
        return (ops.mean(ops.softplus(-(real - ops.mean(fake))))
                + ops.mean(ops.softplus(fake - ops.mean(real))))

    def g_loss(self, step):
        real, fake = step.real_logits, step.fake_logits
        return (ops.mean(ops.softplus(-(fake - ops.mean(real))))
                + ops.mean(ops.softplus(real - ops.mean(fake))))


def real_batches(discriminator):
    return [b for b in discriminator.seen if b.min() >= 10.0]  # fakes come out of tanh


def test_a_generator_update_that_reads_real_data_gets_fresh_examples():
    m, k, steps = 4, 2, 3
    d = RecordingDiscriminator()
    gan = compile_gan(RelativisticAverage(), discriminator=lambda: d, d_steps=k, run_eagerly=True)
    assert gan.real_per_step(m) == m * (k + 1)
    gan.fit(training_pipeline(numbered_source(m * (k + 1) * steps), gan.real_per_step(m),
                              seed=0), epochs=1, steps_per_epoch=steps, verbose=0)
    seen = real_batches(d)
    assert len(seen) == (k + 1) * steps  # k D updates and the G update each score real data
    ids = [int(v) - 10 for b in seen for v in b.reshape(len(b), -1)[:, 0]]
    assert sorted(ids) == list(range(m * (k + 1) * steps))  # each example once: all fresh


def test_a_loss_that_does_not_ask_pays_for_no_real_forward_pass_in_the_g_update():
    d = RecordingDiscriminator()
    gan = compile_gan(NonSaturatingLoss(), discriminator=lambda: d, d_steps=2, run_eagerly=True)
    assert gan.real_per_step(4) == 8
    d.seen.clear()  # the check before training
    gan.fit(training_pipeline(numbered_source(24), 8, seed=0), epochs=1, steps_per_epoch=3,
            verbose=0)
    assert len(real_batches(d)) == 2 * 3


class LabelReader(NonSaturatingLoss):
    def __init__(self):
        self.pairs = []

    def d_loss(self, step):
        if tf.executing_eagerly() and step.training:
            self.pairs.append((ops.convert_to_numpy(step.real)[:, 0, 0, 0],
                               ops.convert_to_numpy(step.labels)))
        return super().d_loss(step)


def test_labels_reach_the_loss_with_their_examples():
    n = 24
    x = np.stack([np.full(SHAPE, 10.0 + i, np.float32) for i in range(n)])
    source = ganflow.DataSource.from_arrays(x, np.arange(n) % 5, num_classes=5)
    loss = LabelReader()
    gan = compile_gan(loss, d_steps=2, run_eagerly=True, num_classes=5)
    gan.fit(training_pipeline(source, 8, seed=0), epochs=1, steps_per_epoch=3, verbose=0)
    assert len(loss.pairs) == 6
    for values, labels in loss.pairs:
        np.testing.assert_array_equal((values - 10).astype(int) % 5, labels)


class LegacyNonSaturating(ganflow.Loss):
    """The same objective in the first loss contract, on logits."""

    def discriminator_loss(self, real_logits, fake_logits):
        return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))

    def generator_loss(self, fake_logits):
        return ops.mean(ops.softplus(-fake_logits))


def test_a_two_method_loss_trains_exactly_as_its_step_api_twin():
    histories, weights = [], []
    for loss in (NonSaturatingLoss(), LegacyNonSaturating()):
        gan = compile_gan(loss, discriminator=RecordingDiscriminator, d_steps=2,
                          optimizer=lambda: keras.optimizers.Adam(1e-3))
        h = gan.fit(training_pipeline(numbered_source(48), 8, seed=0), epochs=1,
                    steps_per_epoch=4, verbose=0)
        histories.append(h.history)
        weights.append(gan.generator.get_weights() + gan.discriminator.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    assert histories[0]["d_loss"] == histories[1]["d_loss"]
    # The lecture's quantities only for the losses where they mean what they say.
    assert set(histories[0]) == {"d_loss", "g_loss", "d_real", "d_fake", "value", "jsd_estimate"}
    assert set(histories[1]) == {"d_loss", "g_loss"}


def test_a_legacy_penalty_still_adds_to_d_loss_as_a_regularizer_with_a_warning():
    class Penalized(LegacyNonSaturating):
        def penalty(self, discriminator, real, fake):
            return 0.0 * ops.mean(discriminator(real, training=True)) + 7.0

    plain = compile_gan(LegacyNonSaturating(), lr=0.0 + 1e-9)
    with pytest.warns(ganflow.GanflowDeprecationWarning,
                      match=r"^Penalized.penalty\(discriminator, real, fake\) is deprecated: "
                            r"write the penalty as a ganflow.Regularizer .* --regularizer NAME"):
        penalized = compile_gan(Penalized(), lr=0.0 + 1e-9)
    histories = [g.fit(training_pipeline(numbered_source(16), 4, seed=0), epochs=1,
                       steps_per_epoch=1, verbose=0).history for g in (plain, penalized)]
    assert histories[1]["d_loss"][-1] - histories[0]["d_loss"][-1] == pytest.approx(7.0, rel=1e-5)
    assert histories[1]["reg/penalty"][-1] == pytest.approx(7.0, rel=1e-6)
    assert "reg/penalty" not in histories[0]


def test_a_step_is_immutable_and_made_once_per_update():
    d = RecordingDiscriminator()
    gan = compile_gan(NonSaturatingLoss(), discriminator=lambda: d, run_eagerly=True,
                      regularizers=[ganflow.Regularization("r1", R1(1.0))])
    d.seen.clear()  # the check before training
    gan.fit(training_pipeline(numbered_source(8), 4, seed=0), epochs=1, steps_per_epoch=1,
            verbose=0)
    # D scores the real batch twice (the logits, R1's own pass for its gradient) and the
    # fakes once in its update, and the fakes once in G's: the loss and R1 share the logits.
    assert len(real_batches(d)) == 2 and len(d.seen) == 4
    step = ganflow.Step.from_logits([[1.0]], [[0.0]])
    with pytest.raises(AttributeError, match="a Step is immutable"):
        step.z = None


def test_losses_see_float32_logits_from_mixed_precision_networks():
    seen = []

    class DtypeReader(NonSaturatingLoss):
        def d_loss(self, step):
            seen.append((keras.backend.standardize_dtype(step.real_logits.dtype),
                         keras.backend.standardize_dtype(step.fake.dtype)))
            return super().d_loss(step)

    generator = keras.Sequential([keras.Input((LATENT,)),
                                  layers.Dense(PIXELS, activation="tanh",
                                               dtype="mixed_bfloat16"),
                                  layers.Reshape(SHAPE, dtype="mixed_bfloat16")])
    gan = compile_gan(DtypeReader(), discriminator=lambda: linear_discriminator("mixed_bfloat16"),
                      generator=lambda: generator)
    history = gan.fit(training_pipeline(numbered_source(16), 4, seed=0), epochs=1,
                      steps_per_epoch=2, verbose=0)
    assert {logits for logits, _ in seen} == {"float32"}
    assert {fake for _, fake in seen} == {"bfloat16"}  # the network's own dtype
    assert np.isfinite(history.history["d_loss"][-1])


class VectorLoss(NonSaturatingLoss):
    def g_loss(self, step):
        return ops.softplus(-step.fake_logits)  # (m, 1): forgot the mean


class SneakyLoss(NonSaturatingLoss):
    def g_loss(self, step):
        return ops.mean(step.real_logits)  # reads real data without asking for it


class BrokenLoss(NonSaturatingLoss):
    def d_loss(self, step):
        raise KeyError("mu")


class BadMetrics(NonSaturatingLoss):
    def metrics(self, step):
        return [ops.mean(step.real_logits)]


@pytest.mark.parametrize("loss, message", [
    (VectorLoss(), "VectorLoss: g_loss returned shape (2, 1) on a batch of 2, not a scalar: "
                   "reduce it, e.g. with ops.mean"),
    (SneakyLoss(), "must set generator_uses_real = True"),
    (BrokenLoss(), "BrokenLoss d_loss failed on a batch of 2: KeyError: 'mu'"),
    (BadMetrics(), "BadMetrics.metrics(step) must return a dict of names to scalars, got list"),
])
def test_the_check_before_training_names_what_is_wrong(loss, message):
    with pytest.raises(StepCheckError) as err:
        compile_gan(loss)
    assert message in str(err.value)
    assert err.value.component is loss


def test_a_vector_regularizer_is_refused_too():
    class Vector(ganflow.Regularizer):
        def __call__(self, step):
            return ops.square(step.real_logits)

    regularizer = Vector()
    with pytest.raises(StepCheckError, match=r"returned shape \(2, 1\)") as err:
        compile_gan(NonSaturatingLoss(), regularizers=[ganflow.Regularization("v", regularizer)])
    assert err.value.component is regularizer


def test_the_check_moves_no_weights_statistics_or_noise():
    generator = keras.Sequential([keras.Input((LATENT,)), layers.Dense(PIXELS),
                                  layers.BatchNormalization(), layers.Reshape(SHAPE)])
    generator.build((None, LATENT))
    before = [w.copy() for w in generator.get_weights()]
    gan = compile_gan(NonSaturatingLoss(), generator=lambda: generator)
    for a, b in zip(before, generator.get_weights()):
        np.testing.assert_array_equal(a, b)  # BatchNorm's moving statistics included
    fresh = GAN(tiny_generator(), linear_discriminator(), LATENT, seed=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(gan.noise(3)),
                                  ops.convert_to_numpy(fresh.noise(3)))


class OutputEnergy(ganflow.Regularizer):
    """A generator-side penalty: c E[G(z)^2]."""

    network = "generator"

    def __call__(self, step):
        return 0.5 * ops.mean(ops.square(step.fake))


def test_a_generator_regularizer_moves_g_alone_every_nth_generator_update():
    every, steps = 3, 6
    gan = compile_gan(ZeroLoss(), regularizers=[
        ganflow.Regularization("energy", OutputEnergy(), every=every)], lr=0.05)
    g0, d0 = gan.generator.get_weights(), gan.discriminator.get_weights()
    history = gan.fit(training_pipeline(numbered_source(40), 4, seed=0), epochs=1,
                      steps_per_epoch=steps, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(d0, gan.discriminator.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(g0, gan.generator.get_weights()))
    # It ran in G updates 0 and 3, times 3: g_loss averages 3 x its value over 2 of 6 steps.
    assert history.history["g_loss"][-1] == pytest.approx(
        every * history.history["reg/energy"][-1] * 2 / steps, rel=1e-5)
