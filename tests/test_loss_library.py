"""The loss and regularizer library: hinge, WGAN with a gradient penalty, least squares,
relativistic pairing, the gradient penalty alone; closed forms on known logits and on a linear
D, and a gradient through the real training step."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import ganflow
from ganflow.data import training_pipeline
from ganflow.gan import GAN
from ganflow_plugins.losses import (HingeLoss, LeastSquaresLoss, RelativisticPairingLoss,
                                    WassersteinLoss)
from ganflow_plugins.regularizers import GradientPenalty, gradient_penalty

REAL = np.array([[-2.0], [0.5], [3.0]], np.float32)
FAKE = np.array([[-1.5], [0.5], [-0.25]], np.float32)


def d_step(real=REAL, fake=FAKE):
    return ganflow.Step.from_logits(real, fake)


def g_step(fake=FAKE):
    return ganflow.Step.from_logits(fake_logits=fake, update="generator")


def test_hinge():
    loss = HingeLoss()
    expected = np.maximum(0, 1 - REAL).mean() + np.maximum(0, 1 + FAKE).mean()
    assert float(loss.d_loss(d_step())) == pytest.approx(expected, rel=1e-6)
    assert float(loss.g_loss(g_step())) == pytest.approx(-FAKE.mean(), rel=1e-6)


def test_least_squares():
    loss = LeastSquaresLoss()
    expected = 0.5 * (((REAL - 1) ** 2).mean() + (FAKE**2).mean())
    assert float(loss.d_loss(d_step())) == pytest.approx(expected, rel=1e-6)
    assert float(loss.g_loss(g_step())) == pytest.approx(0.5 * ((FAKE - 1) ** 2).mean(), rel=1e-6)


def test_wasserstein_without_penalty_and_its_critic_gap():
    loss = WassersteinLoss(gp=0.0, sides="two-sided")
    assert float(loss.d_loss(d_step())) == pytest.approx(FAKE.mean() - REAL.mean(), rel=1e-6)
    assert float(loss.g_loss(g_step())) == pytest.approx(-FAKE.mean(), rel=1e-6)
    gap = float(loss.metrics(d_step())["critic_gap"])
    assert gap == pytest.approx(REAL.mean() - FAKE.mean(), rel=1e-6)


SHAPE = (3, 2, 1)


def linear_critic(w):
    """s(x) = w . x, so grad_x s = w everywhere: the gradient penalty is (||w|| - 1)^2."""
    d = keras.Sequential([keras.Input(SHAPE), layers.Flatten(), layers.Dense(1, use_bias=False)])
    d.layers[-1].set_weights([np.asarray(w, np.float32).reshape(-1, 1)])
    return d


def step_on(discriminator, real, fake, seed=0):
    return ganflow.Step.forward("discriminator", generator=None, discriminator=discriminator,
                                real=tf.constant(real, tf.float32),
                                fake=tf.constant(fake, tf.float32),
                                seed_generator=keras.random.SeedGenerator(seed))


@pytest.mark.parametrize("scale, two_sided, one_sided", [
    (2.0, 1.0, 1.0),  # ||w|| = 2: both penalize (2 - 1)^2
    (0.5, 0.25, 0.0),  # ||w|| = 0.5: only the two-sided one, (0.5 - 1)^2
])
def test_gradient_penalty_on_a_linear_critic(scale, two_sided, one_sided):
    w = np.ones(6) / np.sqrt(6) * scale
    rng = np.random.default_rng(0)
    step = step_on(linear_critic(w), rng.normal(size=(5, *SHAPE)), rng.normal(size=(5, *SHAPE)))
    assert float(gradient_penalty(step)) == pytest.approx(two_sided, rel=1e-4)
    assert float(gradient_penalty(step, one_sided=True)) == pytest.approx(one_sided, abs=1e-6)
    assert float(GradientPenalty(10.0, "one-sided")(step)) == pytest.approx(10 * one_sided,
                                                                            abs=1e-5)
    loss = WassersteinLoss(gp=10.0, sides="two-sided")
    critic = ops.convert_to_numpy(step.real_logits).mean() - ops.convert_to_numpy(
        step.fake_logits).mean()
    assert float(loss.d_loss(step)) == pytest.approx(-critic + 10 * two_sided, rel=1e-4)


def test_interpolation_weights_are_uniform_and_drawn_per_example():
    # s(x) = ||x||^2 / 2, so grad s(x_hat) = x_hat = alpha * 1 between real = 1 and fake = 0:
    # ||grad|| = alpha sqrt(d). With alpha ~ U[0, 1] per example, the penalty's mean over many
    # examples is E[(alpha sqrt(d) - 1)^2] = d / 3 - sqrt(d) + 1.
    d = float(np.prod(SHAPE))
    square = keras.Sequential([keras.Input(SHAPE), layers.Flatten(),
                               layers.Lambda(lambda x: 0.5 * ops.sum(x * x, axis=1,
                                                                     keepdims=True))])
    m = 4000
    step = step_on(square, np.ones((m, *SHAPE)), np.zeros((m, *SHAPE)))
    assert float(gradient_penalty(step)) == pytest.approx(d / 3 - np.sqrt(d) + 1, rel=0.05)


def test_wgan_gp_gradient_through_the_real_training_step():
    # G makes one fixed image b (no trainable weights); D is linear; plain SGD. One critic
    # update moves w by -lr * (b - mean(real) + gp * 2 (||w|| - 1) w / ||w||).
    lr, gp = 0.1, 10.0
    b = np.full(SHAPE, -0.5, np.float32)
    generator = keras.Sequential([keras.Input((2,)), layers.Dense(6, trainable=False),
                                  layers.Reshape(SHAPE)])
    generator.layers[0].set_weights([np.zeros((2, 6), np.float32), b.reshape(-1)])
    w0 = np.linspace(0.2, 0.9, 6).astype(np.float32)
    critic = linear_critic(w0)
    gan = GAN(generator, critic, latent_dim=2, seed=0)
    gan.compile(keras.optimizers.SGD(lr), keras.optimizers.SGD(lr),
                WassersteinLoss(gp=gp, sides="two-sided"))
    real = np.stack([np.full(SHAPE, v, np.float32) for v in (1.0, 2.0, 3.0, 4.0)])
    source = ganflow.DataSource.from_arrays(real)
    gan.fit(training_pipeline(source, 4, seed=0), epochs=1, steps_per_epoch=1, verbose=0)
    norm = np.linalg.norm(w0)
    gradient = b.reshape(-1) - real.reshape(4, -1).mean(0) + gp * 2 * (norm - 1) * w0 / norm
    np.testing.assert_allclose(critic.get_weights()[0][:, 0], w0 - lr * gradient, rtol=1e-4)


def sigmoid(s):
    return 1.0 / (1.0 + np.exp(-s))


# loss -> (f', g', h'): d_loss = mean f(s_real) + mean g(s_fake), g_loss = mean h(s_fake).
DERIVATIVES = {
    "non-saturating": (lambda s: -sigmoid(-s), sigmoid, lambda s: -sigmoid(-s)),
    "minimax": (lambda s: -sigmoid(-s), sigmoid, lambda s: -sigmoid(s)),
    "hinge": (lambda s: -(s < 1.0).astype(float), lambda s: (s > -1.0).astype(float),
              lambda s: -np.ones_like(s)),
    "lsgan": (lambda s: 0.5 * 2 * (s - 1.0), lambda s: 0.5 * 2 * s, lambda s: 0.5 * 2 * (s - 1.0)),
    "wgan:gp=0": (lambda s: -np.ones_like(s), lambda s: np.ones_like(s),
                  lambda s: -np.ones_like(s)),
}


def bias_generator_and_linear_critic(loss, lr):
    """A GAN whose G makes one image b0 for every z (its only trainable weight is the bias) and
    whose D is w0 . x, compiled with plain SGD: (gan, generator, critic, b0, w0)."""
    b0 = np.linspace(-0.6, 0.6, 6).astype(np.float32)
    generator = keras.Sequential([keras.Input((2,)),
                                  layers.Dense(6, kernel_initializer="zeros",
                                               bias_initializer=keras.initializers.Constant(b0)),
                                  layers.Reshape(SHAPE)])
    generator.layers[0].kernel.trainable = False
    w0 = np.linspace(0.3, -0.4, 6).astype(np.float32)
    critic = linear_critic(w0)
    gan = GAN(generator, critic, latent_dim=2, seed=0)
    gan.compile(keras.optimizers.SGD(lr), keras.optimizers.SGD(lr), loss)
    return gan, generator, critic, b0, w0


@pytest.mark.parametrize("name", list(DERIVATIVES))
def test_each_loss_gradient_through_the_real_training_step(plugins, name):
    # G makes one image b for every z (its only trainable weight is the bias b); D(x) = w . x;
    # plain SGD. The D update moves w by -lr * (mean f'(s_r) x_r + g'(s_f) b), then the G
    # update moves b by -lr * h'(w1 . b) w1, with the D that update just made.
    lr = 0.05
    f, g, h = DERIVATIVES[name]
    loss = plugins.component(plugins.losses, name, "--loss").build()
    gan, generator, critic, b0, w0 = bias_generator_and_linear_critic(loss, lr)
    real = np.stack([np.full(SHAPE, v, np.float32) for v in (0.5, -1.0, 2.0, 0.25)])
    gan.fit(training_pipeline(ganflow.DataSource.from_arrays(real), 4, seed=0), epochs=1,
            steps_per_epoch=1, verbose=0)
    x = real.reshape(4, -1).astype(np.float64)
    s_real, s_fake = x @ w0, float(b0 @ w0)
    w1 = w0 - lr * ((f(s_real)[:, None] * x).mean(0) + g(np.array(s_fake)) * b0)
    np.testing.assert_allclose(critic.get_weights()[0][:, 0], w1, rtol=1e-4, atol=1e-6)
    b1 = b0 - lr * h(np.array(float(b0 @ w1))) * w1
    np.testing.assert_allclose(generator.layers[0].bias.numpy(), b1, rtol=1e-4, atol=1e-6)


def softplus(s):
    return np.log1p(np.exp(s))


def test_relativistic_pairing_pairs_each_real_logit_with_a_fake_one():
    loss = RelativisticPairingLoss()
    assert loss.generator_uses_real  # G's loss reads D's logits of real data
    both = ganflow.Step.from_logits(REAL, FAKE, update="generator")
    assert float(loss.d_loss(d_step())) == pytest.approx(softplus(FAKE - REAL).mean(), rel=1e-6)
    assert float(loss.g_loss(both)) == pytest.approx(softplus(REAL - FAKE).mean(), rel=1e-6)
    assert float(loss.metrics(d_step())["pair_gap"]) == pytest.approx((REAL - FAKE).mean())
    # Shifting every logit alike changes nothing: only the pairs' differences count.
    shifted = ganflow.Step.from_logits(REAL + 7.0, FAKE + 7.0)
    assert float(loss.d_loss(shifted)) == pytest.approx(float(loss.d_loss(d_step())), rel=1e-6)


def test_relativistic_pairing_gradient_through_the_real_training_step(plugins):
    # As above, with every real example the same image r: D's update moves w by
    # -lr sigmoid(s_f - s_r) (b - r); G's, with real examples of its own, moves b by
    # +lr sigmoid(w1 . r - w1 . b) w1.
    lr = 0.05
    loss = plugins.component(plugins.losses, "rpgan", "--loss").build()
    gan, generator, critic, b0, w0 = bias_generator_and_linear_critic(loss, lr)
    assert gan.real_per_step(4) == 8  # 4 for D's update, 4 more for G's
    r = np.linspace(1.0, -0.5, 6)
    real = np.stack([r.reshape(SHAPE).astype(np.float32)] * 8)
    gan.fit(training_pipeline(ganflow.DataSource.from_arrays(real), 8, seed=0), epochs=1,
            steps_per_epoch=1, verbose=0)
    w1 = w0 - lr * sigmoid(b0 @ w0 - r @ w0) * (b0 - r)
    np.testing.assert_allclose(critic.get_weights()[0][:, 0], w1, rtol=1e-4, atol=1e-6)
    b1 = b0 + lr * sigmoid(r @ w1 - b0 @ w1) * w1
    np.testing.assert_allclose(generator.layers[0].bias.numpy(), b1, rtol=1e-4, atol=1e-6)
