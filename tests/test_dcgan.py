import numpy as np
import pytest

import ganflow
from ganflow_plugins.dcgan import DCGAN


@pytest.mark.parametrize("side, channels, doublings", [(28, 1, 2), (32, 1, 3), (32, 3, 3),
                                                       (64, 3, 4)])
def test_networks_fit_the_image_size(side, channels, doublings):
    spec = ganflow.DataSpec(shape=(side, side, channels), size=100)
    arch = DCGAN()
    g, d = arch.build_generator(spec, 16), arch.build_discriminator(spec)
    images = g(np.zeros((2, 16), np.float32), training=False).numpy()
    assert images.shape == (2, side, side, channels)
    assert images.min() >= -1.0 and images.max() <= 1.0  # tanh out
    assert tuple(d(images).shape) == (2, 1)
    assert sum("conv2d_transpose" in layer.name for layer in g.layers) == doublings


def test_d_can_be_narrower_than_g():
    from keras import layers

    spec = ganflow.DataSpec(shape=(32, 32, 3), size=100)
    arch = DCGAN(width=16, d_width=4)  # PacGAN's Table 3: D a quarter of G
    g, d = arch.build_generator(spec, 8), arch.build_discriminator(spec)
    assert [l.filters for l in d.layers if isinstance(l, layers.Conv2D)] == [4, 8, 16]
    assert [l.filters for l in g.layers if isinstance(l, layers.Conv2DTranspose)] == [32, 16, 3]
    assert tuple(d(g(np.zeros((2, 8), np.float32))).shape) == (2, 1)


@pytest.mark.parametrize("shape, message", [
    ((30, 20, 1), "needs square images with an even side of at least 8, got 30x20"),
    ((7, 7, 1), "got 7x7"),
    ((2,), "needs images"),
])
def test_unfit_shapes_are_refused(shape, message):
    with pytest.raises(ganflow.UsageError, match=message):
        DCGAN().build_generator(ganflow.DataSpec(shape=shape, size=10), 8)


def test_packed_d_judges_images_stacked_along_the_channels():
    spec = ganflow.DataSpec(shape=(16, 16, 3), size=100)
    d = DCGAN(pack=2).build_discriminator(spec)
    inner = d.inner
    assert inner.input_shape == (None, 16, 16, 6)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3)).astype(np.float32)
    logits = d(x).numpy()
    assert logits.shape == (5, 1)
    # Examples 0 and 1 are one pack, 2 and 3 the next; the odd one out is packed with the
    # batch's first example (the batch padded by repeating itself).
    pairs = [(0, 1), (2, 3), (4, 0)]
    alone = inner(np.stack([np.concatenate([x[a], x[b]], axis=-1) for a, b in pairs])).numpy()
    np.testing.assert_allclose(logits[[0, 1, 2, 3, 4]], alone[[0, 0, 1, 1, 2]], rtol=1e-5,
                               atol=1e-6)
    changed = x.copy()
    changed[3] = -changed[3]
    moved = d(changed).numpy()
    np.testing.assert_array_equal(moved[[0, 1, 4]], logits[[0, 1, 4]])
    assert np.abs(moved[2:4] - logits[2:4]).min() > 1e-6


@pytest.mark.parametrize("sigma_grad", [False, True], ids=["keras", "paper"])
def test_spectral_norm_s_gradient_with_and_without_sigma(sigma_grad):
    import keras
    import tensorflow as tf

    from ganflow.layers import SpectralNormalization

    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(4, use_bias=False)
    layer = SpectralNormalization(dense, sigma_grad=sigma_grad)
    x = tf.random.normal((8, 6), seed=1)
    layer(x, training=True)
    for _ in range(300):  # the power iteration's u converges to the top singular vector
        layer(x, training=False if sigma_grad else True)
        layer.vector_u.assign(layer.normalized_weights()[0])
    w = dense.kernel.numpy()
    u_, s, vt = np.linalg.svd(w)
    sigma, v, u = s[0], u_[:, :1].T, vt[:1]  # Keras's v is W's left, u its right vector
    c = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * c)
    grad = tape.gradient(loss, dense.kernel).numpy()
    np.testing.assert_allclose(y.numpy(), x.numpy() @ (w / sigma), rtol=1e-4, atol=1e-5)
    g_hat = x.numpy().T @ c  # dL/d(W / sigma)
    if sigma_grad:  # dL/dW = G / sigma - <G, W> / sigma^2 v^T u: W itself is left as it was
        expected = g_hat / sigma - (g_hat * w).sum() / sigma**2 * (v.T @ u)
        np.testing.assert_array_equal(dense.kernel.numpy(), w)
    else:  # the gradient at W / sigma, which Keras wrote into W (sigma now 1)
        expected = g_hat
        assert np.linalg.svd(dense.kernel.numpy(), compute_uv=False)[0] == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-4)


def test_a_run_with_packing_and_the_paper_s_spectral_norm_trains_and_records_them(cli, workdir):
    import mlflow

    from conftest import TINY

    result = cli("run", "--plugin", "dcgan", "--arch", "dcgan:sn,sigma_grad=true,pack=2", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    params = run.data.params
    assert (params["arch.sn"], params["arch.sigma_grad"], params["arch.pack"]) == \
        ("True", "True", "2")
    assert np.isfinite(run.data.metrics["d_loss"])
