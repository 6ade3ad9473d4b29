"""The stylegan2 architecture, its layers, the pl regularizer and the stylegan2 recipe:
shapes, demodulation, the minibatch standard deviation, the path length against a hand
computation, the mean latent and truncation, gradients through the real training step,
mixed precision, two replicas, and the recipe end to end (truncation through MLflow)."""

import json
import math

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

import ganflow
from ganflow import checkpoints
from ganflow.style import MinibatchStddev, ModulatedConv2D, mean_latents, truncation
from ganflow_plugins.stylegan2 import PathLength, StyleGAN2, path_lengths

from conftest import TINY, trained
from test_distribute import SAME_AS_ONE_DEVICE, run_script

SMALL = dict(cbase=256, cmax=16, w_dim=16, mapping=2)


def spec(side, channels=3):
    return ganflow.DataSpec(shape=(side, side, channels), size=100)


@pytest.mark.parametrize("side", [8, 32, 64, 128])
@pytest.mark.parametrize("num_classes", [None, 10], ids=["plain", "conditional"])
def test_networks_fit_every_side(side, num_classes):
    arch = StyleGAN2(**SMALL)
    g = arch.build_generator(spec(side), 12, num_classes)
    d = arch.build_discriminator(spec(side), num_classes)
    z = tf.random.normal((4, 12), seed=1)
    labels = tf.constant([1, 7, 7, 0])
    images = g(z if num_classes is None else [z, labels], training=True)
    assert tuple(images.shape) == (4, side, side, 3)
    assert g.get_layer("synthesis").input.shape[1] == 2 * int(math.log2(side)) - 2
    logits = d(images if num_classes is None else [images, labels], training=True)
    assert tuple(logits.shape) == (4, 1) and np.isfinite(logits.numpy()).all()
    if num_classes:  # the label changes both networks' outputs
        other = tf.constant([2, 2, 3, 3])
        assert not np.allclose(g([z, other], training=False), g([z, labels], training=False))
        assert not np.allclose(d([images, other]), d([images, labels]))


@pytest.mark.parametrize("shape, message", [
    ((32, 16, 3), "square"), ((48, 48, 3), "power of 2"), ((4, 4, 1), "from 8"),
    ((2,), "images"),
])
def test_what_the_architecture_cannot_build_is_refused(shape, message):
    with pytest.raises(ganflow.UsageError, match=message):
        StyleGAN2().build_generator(ganflow.DataSpec(shape=shape, size=10), 8)


def test_demodulation_keeps_unit_output_variance_for_unit_inputs():
    x = tf.random.normal((64, 8, 8, 64), seed=2)
    w = 3.0 * tf.random.normal((64, 32), seed=3)  # styles far from 1
    plain = ModulatedConv2D(64, noise=False, activation="linear")
    raw = ModulatedConv2D(64, demodulate=False, noise=False, activation="linear")
    # Away from the border, where the zero padding leaves out some of the kernel's taps.
    variance = float(tf.math.reduce_variance(plain([x, w])[:, 1:-1, 1:-1]))
    assert variance == pytest.approx(1.0, abs=0.05)
    raw([x, w])  # built; the same kernel and styles, without demodulation
    raw.set_weights(plain.get_weights())
    assert float(tf.math.reduce_variance(raw([x, w])[:, 1:-1, 1:-1])) > 3.0


def test_noise_is_fresh_while_training_and_fixed_at_inference():
    layer = ModulatedConv2D(4, up=True)
    x, w = tf.random.normal((2, 4, 4, 4), seed=4), tf.random.normal((2, 8), seed=5)
    layer([x, w])
    layer.noise_strength.assign(1.0)
    assert not np.allclose(layer([x, w], training=True), layer([x, w], training=True))
    np.testing.assert_array_equal(layer([x, w]), layer([x, w]))
    assert tuple(layer([x, w]).shape) == (2, 8, 8, 4)


@pytest.mark.parametrize("batch, group", [(8, 4), (6, 2), (3, 1)])
def test_minibatch_stddev_against_numpy(batch, group):
    x = np.random.default_rng(0).standard_normal((batch, 4, 4, 3)).astype("float32")
    out = MinibatchStddev(4)(tf.constant(x)).numpy()
    grouped = x.reshape(-1, group, 4, 4, 3)  # consecutive examples
    std = np.sqrt(grouped.var(axis=1) + 1e-8).mean(axis=(1, 2, 3))  # per group
    expected = np.repeat(std, group)
    assert out.shape == (batch, 4, 4, 4)
    np.testing.assert_allclose(out[..., :3], x)
    np.testing.assert_allclose(out[:, 0, 0, 3], expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(out[..., 3], axis=(1, 2)).max() == 0  # one value a map


def test_path_length_against_a_hand_computation_on_a_linear_synthesis():
    # images = reshape(flatten(ws) @ A): J^T y = A y, whatever ws is.
    layers_, w_dim, side = 3, 4, 2
    a = np.random.default_rng(1).standard_normal((layers_ * w_dim, side * side)).astype("f4")
    ws_in = keras.Input((layers_, w_dim))
    dense = keras.layers.Dense(side * side, use_bias=False)
    synthesis = keras.Model(ws_in, keras.layers.Reshape((side, side, 1))(
        dense(keras.layers.Flatten()(ws_in))))
    dense.kernel.assign(a)
    ws = tf.random.normal((5, layers_, w_dim), seed=7)
    y = np.random.default_rng(2).standard_normal((5, side, side, 1)).astype("f4")
    lengths = path_lengths(synthesis, ws, tf.constant(y)).numpy()
    gradient = (y.reshape(5, -1) @ a.T).reshape(5, layers_, w_dim)
    expected = np.sqrt((gradient ** 2).sum(axis=2).mean(axis=1))
    np.testing.assert_allclose(lengths, expected, rtol=1e-5)


def test_the_pl_regularizer_moves_its_mean_and_penalizes_the_spread():
    arch = StyleGAN2(**SMALL, mixing=0.0)
    g = arch.build_generator(spec(8, 1), 8)
    pl = PathLength(weight=2.0, decay=0.5)
    step = ganflow.Step("generator", generator=g, discriminator=None,
                        z=tf.random.normal((8, 8), seed=8), seed_generator=keras.random.
                        SeedGenerator(3))
    first = float(pl(step))
    mean = float(pl.state["pl_mean"].numpy())
    assert mean > 0 and first > 0
    pl(step)  # another draw of y: the mean moves halfway to the new lengths' mean
    assert float(pl.state["pl_mean"].numpy()) != mean
    with pytest.raises(ganflow.UsageError, match="stylegan2"):
        PathLength()(ganflow.Step("generator", generator=keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(4)]), discriminator=None,
            z=tf.zeros((2, 8))))


def test_the_mean_latent_is_tracked_saved_and_truncation_zero_gives_its_image(tmp_path):
    arch = StyleGAN2(**SMALL)
    g = arch.build_generator(spec(8, 1), 8)
    mapping, synthesis = g.get_layer("mapping"), g.get_layer("synthesis")
    (mean_latent,) = mean_latents(g)
    for seed in range(60):  # training calls move w_avg towards the batches' mean w
        g(tf.random.normal((32, 8), seed=seed), training=True)
    w = mapping(tf.random.normal((4000, 8), seed=99)).numpy().mean(axis=0)
    w_avg = mean_latent.w_avg.numpy()
    # From 0, 60 moves of 0.5% each: (1 - 0.995^60) of the way to the mean w.
    np.testing.assert_allclose(w_avg, (1 - 0.995 ** 60) * w, atol=0.03 * np.abs(w).max())
    z = tf.random.normal((5, 8), seed=11)
    with truncation(g, 0.0):
        images = g(z).numpy()
    ws = np.broadcast_to(w_avg, (1, synthesis.input.shape[1], w_avg.size))
    np.testing.assert_allclose(images, np.repeat(synthesis(ws).numpy(), 5, axis=0),
                               atol=1e-5)
    assert float(mean_latent.psi.numpy()) == 1.0  # restored after the block
    with truncation(g, 0.5):
        halfway = g(z).numpy()
    assert 0 < np.abs(halfway - images).max() < np.abs(g(z).numpy() - images).max()
    g.save(tmp_path / "g.keras")
    loaded = keras.saving.load_model(tmp_path / "g.keras")
    np.testing.assert_array_equal(mean_latents(loaded)[0].w_avg.numpy(), w_avg)
    np.testing.assert_allclose(loaded(z), g(z), atol=1e-6)
    with pytest.raises(ValueError, match="stylegan2"):
        with truncation(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), 0.5):
            pass


@pytest.mark.parametrize("flags", [
    {"regularizers": ["r1:gamma=1", "pl"]},
    {"regularizers": ["pl"], "conditional": True, "precision": "mixed_bfloat16"},
], ids=["pl-r1", "conditional-bfloat16"])
def test_every_trainable_variable_gets_a_gradient_through_the_training_step(plugins, flags,
                                                                           tmp_path):
    # Two steps: the noise strengths start at 0, so their layers' weights see no noise in the
    # first; style mixing on, ADA off (its p starts at 0 anyway).
    gan, variables, before, history = trained(
        plugins, "stylegan2", {"arch": "stylegan2:cbase=256,cmax=16,w_dim=16,mapping=2",
                               "augment": (), "ema": None, **flags}, steps=2)
    still = [v.path for v, b in zip(variables, before) if np.array_equal(v.numpy(), b)]
    assert still == []
    assert all(np.isfinite(history[k][-1]) for k in ("d_loss", "g_loss", "reg/pl"))
    assert history["pl/mean"][-1] > 0
    w_avg = mean_latents(gan.generator)[0].w_avg
    assert np.abs(w_avg.numpy()).max() > 0
    # The mean latent and pl's moving mean are in the run's checkpoint, and come back.
    pl_mean = next(v for k, v in gan.plugin_state.items() if k.endswith("pl_mean"))
    kept = (w_avg.numpy().copy(), float(pl_mean.numpy()))
    store = checkpoints.Checkpoints(gan, tmp_path, 1)
    store.save()
    w_avg.assign(np.zeros_like(kept[0]))
    pl_mean.assign(0.0)
    store.restore()
    np.testing.assert_array_equal(w_avg.numpy(), kept[0])
    assert float(pl_mean.numpy()) == kept[1] > 0
    if flags.get("precision") == "mixed_bfloat16":
        conv = next(layer for layer in gan.generator.get_layer("synthesis").layers
                    if isinstance(layer, ModulatedConv2D))
        assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
        assert gan.generator(tf.zeros((1, 128)) if not gan.conditional else
                             [tf.zeros((1, 128)), tf.zeros((1,), "int32")]).dtype == "float32"


@pytest.mark.slow
def test_two_replicas_train_stylegan2_as_one_device():
    # Noise, style mixing and the minibatch standard deviation's groups are per replica what
    # one device makes of the global batch: without pl the two runs agree to float rounding.
    # pl's projections y come from the plugins' seeds, which differ per replica, and each
    # replica keeps its own moving mean (see PathLength): Adam turns the few near-zero
    # gradients that flips (the noise strengths', which start at 0) into whole steps, so after
    # 4 steps the networks agree to a small share of how far the steps moved them (measured:
    # 1.4e-3 of 4.9e-2).
    arch = "stylegan2:cbase=256,cmax=16,w_dim=16,mapping=2"
    exact, with_pl = run_script(SAME_AS_ONE_DEVICE, json.dumps([
        {"arch": arch, "regularizers": ["r1:gamma=0.1,every=2"], "latent_dim": 16},
        {"arch": arch, "regularizers": ["pl:every=2"], "latent_dim": 16}]), "mirrored")
    assert exact["replicas"] == 2 and exact["steps_done"] == 4 and exact["moved"] > 1e-2
    assert exact["networks_diff"] < 1e-5, exact
    one, two = exact["logs"]
    for name, value in one.items():
        assert two[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert with_pl["networks_diff"] < 0.1 * with_pl["moved"], with_pl
    one, two = with_pl["logs"]
    assert two["d_loss"] == pytest.approx(one["d_loss"], rel=1e-3)
    assert np.isfinite(two["reg/pl"]) and two["pl/mean"] > 0


@pytest.mark.slow
def test_stylegan2_trains_registers_and_samples_with_truncation(cli, workdir):
    result = cli("run", "--plugin", "stylegan2", "--arch",
                 "stylegan2:cbase=256,cmax=16,w_dim=32,mapping=2", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    params = run.data.params
    assert params["loss"] == "non-saturating" and params["arch.mapping"] == "2"
    assert params["regularizers"] == "r1:gamma=0.01,every=16;pl:every=4"
    assert "reg/pl" in run.data.metrics and "ada/p" in run.data.metrics
    samples = {}
    for psi in (None, "0.5", "0"):
        out = cli("sample", "models:/stylegan2-generator@latest", "-n", "6", "--npz", "-o",
                  "s.npz", *(["--truncation", psi] if psi else []))
        assert out.exit_code == 0, out.output
        samples[psi] = np.load(workdir / "s.npz")["samples"]
    assert samples[None].shape == (6, 32, 32, 1)
    assert samples["0"].std(axis=0).max() < 1e-5 < samples["0.5"].std(axis=0).max() < \
        samples[None].std(axis=0).max()
    described = mlflow.MlflowClient().get_registered_model("stylegan2-generator").description
    assert "`--truncation 0.7`" in described
    # MLflow passes the inference parameter through the registered model's signature.
    model = mlflow.pyfunc.load_model("models:/stylegan2-generator@latest")
    z = np.random.default_rng(0).standard_normal((3, 128)).astype("float32")
    flat = model.predict(z, params={"truncation": 0.0})
    assert np.abs(flat - flat[:1]).max() < 1e-5
    assert np.abs(model.predict(z) - flat).max() > 1e-3
