"""The resnet architecture (SNGAN, BigGAN) and the sngan recipe: shapes, spectral norm,
self-attention, gradients through the real training step, mixed precision, two replicas,
and the recipe end to end."""

import json

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

import ganflow
from ganflow.layers import SelfAttention
from ganflow.prepare import prepare
from ganflow.resolve import configure, resolve
from ganflow_plugins.resnet import ResNet

from conftest import TINY, trained
from test_distribute import SAME_AS_ONE_DEVICE, run_script


def spec(side, channels=3):
    return ganflow.DataSpec(shape=(side, side, channels), size=100)


@pytest.mark.parametrize("side", [32, 64, 128])
@pytest.mark.parametrize("num_classes", [None, 10], ids=["plain", "conditional"])
def test_networks_fit_every_supported_side(side, num_classes):
    arch = ResNet(width=8, attention=16)
    g = arch.build_generator(spec(side), 16, num_classes)
    d = arch.build_discriminator(spec(side), num_classes)
    z = tf.random.normal((2, 16), seed=1)
    labels = tf.constant([1, 7])
    images = g(z if num_classes is None else [z, labels], training=False).numpy()
    assert images.shape == (2, side, side, 3)
    assert -1.0 <= images.min() and images.max() <= 1.0  # tanh out
    images = tf.constant(images)
    logits = d(images if num_classes is None else [images, labels], training=False)
    assert tuple(logits.shape) == (2, 1)
    # One up-block per doubling from 4x4, and one attention block in each network.
    ups = [layer for layer in g.layers if isinstance(layer, keras.layers.UpSampling2D)]
    assert len(ups) == 2 * int(np.log2(side // 4))  # the residual path's and the shortcut's
    assert sum(isinstance(layer, SelfAttention) for layer in g.layers + d.layers) == 2


def test_attention_goes_once_into_each_network():
    # At 32 px D's maps are 16, 8, 8, 8 wide: attention at 8 follows the first of them only.
    arch = ResNet(width=4, attention=8)
    for network in (arch.build_generator(spec(32), 8), arch.build_discriminator(spec(32))):
        assert sum(isinstance(layer, SelfAttention) for layer in network.layers) == 1


def test_conditional_networks_depend_on_the_label():
    arch = ResNet(width=4)
    g, d = arch.build_generator(spec(32), 8, 10), arch.build_discriminator(spec(32), 10)
    # A class's gain and bias start at 1 and 0: move one class's, as training does.
    for layer in g.layers:
        if isinstance(layer, keras.layers.Embedding):
            table = layer.embeddings.numpy()
            table[3] += 0.5
            layer.embeddings.assign(table)
    z = tf.random.normal((2, 8), seed=2)
    same = g([z, tf.constant([3, 3])], training=False)
    other = g([z, tf.constant([4, 4])], training=False)
    assert np.abs(same.numpy() - other.numpy()).max() > 1e-3
    x = tf.random.uniform((1, 32, 32, 3), -1, 1, seed=3)
    logits = [float(d([x, tf.constant([c])], training=False)[0, 0]) for c in (0, 5)]
    assert logits[0] != pytest.approx(logits[1], abs=1e-6)  # the projection term


@pytest.mark.parametrize("shape, arch, message", [
    ((48, 48, 3), ResNet(), "needs square images of side 32, 64 or 128, got 48x48: pass "
                            "--image-size 32"),
    ((2,), ResNet(), "needs images"),
    ((32, 32, 1), ResNet(attention=12), "attention=12: the side of a feature map"),
    ((32, 32, 1), ResNet(attention=32), "a power of 2 from 8 to 16"),
])
def test_what_the_architecture_cannot_build_is_refused(shape, arch, message):
    with pytest.raises(ganflow.UsageError, match=message):
        arch.build_generator(ganflow.DataSpec(shape=shape, size=10), 8)


def test_spectral_norm_holds_every_layer_of_d_at_unit_largest_singular_value():
    keras.utils.set_random_seed(0)  # the power iteration's start, and the weights
    d = ResNet(width=4, attention=16).build_discriminator(spec(32))
    wrapped = [layer for layer in d._flatten_layers()
               if isinstance(layer, keras.layers.SpectralNormalization)]
    # 2 convolutions a block, the 2 downsampling blocks' shortcuts, the dense, attention's 4
    assert len(wrapped) == 4 * 2 + 2 + 1 + 4
    x = tf.random.uniform((4, 32, 32, 3), -1, 1, seed=4)
    for _ in range(100):  # power iterations run in training calls, one a call
        d(x, training=True)
    for layer in wrapped:  # the weight the layer computes with, W / sigma(W)
        kernel = np.asarray(layer._normalized()[1]).reshape(-1, layer.kernel.shape[-1])
        assert np.linalg.svd(kernel, compute_uv=False)[0] == pytest.approx(1.0, abs=0.02)


def test_self_attention_starts_as_the_identity_and_attends_once_gamma_moves():
    layer = SelfAttention(kernel_initializer="orthogonal")
    x = tf.random.normal((2, 8, 8, 16), seed=5)
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    # Query and key start apart (one unseeded initializer object would start them equal).
    assert np.abs(layer.f.kernel.numpy() - layer.g.kernel.numpy()).max() > 1e-3
    layer.gamma.assign(1.0)
    moved = layer(x).numpy() - x.numpy()
    assert np.abs(moved).max() > 1e-2
    # Each position's output mixes every pooled position: change one far corner of the input
    # and the first position's output changes.
    far = x.numpy()
    far[:, 7, 7, :] += 3.0
    assert np.abs(layer(far).numpy()[:, 0, 0] - layer(x).numpy()[:, 0, 0]).max() > 1e-4


def test_a_generator_with_attention_saves_and_loads_as_keras_file(tmp_path):
    g = ResNet(width=4, attention=16, g_sn=True).build_generator(spec(32, 1), 8)
    for layer in g._flatten_layers():
        if isinstance(layer, SelfAttention):
            layer.gamma.assign(0.5)
    z = tf.random.normal((3, 8), seed=6)
    g.save(tmp_path / "g.keras")
    loaded = keras.saving.load_model(tmp_path / "g.keras")
    np.testing.assert_allclose(loaded(z, training=False), g(z, training=False), atol=1e-6)


def fitted(plugins, flags, steps=3):
    """The sngan recipe's networks before and after ``steps`` real training steps."""
    _, variables, before, history = trained(plugins, "sngan", flags, steps)
    return variables, before, history


@pytest.mark.parametrize("flags", [
    {"arch": "resnet:width=4,attention=16,sn=false,init=orthogonal"},
    {"arch": "resnet:width=4,depth=2,sn=false,shared=8,hierarchical=true", "conditional": True},
], ids=["attention-orthogonal", "conditional-hierarchical-depth2"])
def test_every_trainable_variable_gets_a_gradient_through_the_training_step(plugins, flags):
    # Without spectral norm, which rewrites every kernel it wraps at each training call, so
    # that a weight moves only by its gradient. Three steps: self-attention's gamma starts at
    # 0, so its convolutions get no gradient until the first step has moved it.
    variables, before, history = fitted(plugins, {**flags, "d_steps": 2}, steps=3)
    still = [v.path for v, b in zip(variables, before) if np.array_equal(v.numpy(), b)]
    assert still == []
    assert all(np.isfinite(history[k][-1]) for k in ("d_loss", "g_loss"))


def test_resnet_trains_in_mixed_bfloat16(plugins):
    config = configure(plugins, "sngan", {"precision": "mixed_bfloat16", "batch_size": 8,
                                          "eval_every": 0, "d_steps": 1,
                                          "arch": "resnet:width=4,attention=16"})
    prepared = prepare(resolve(config, plugins))  # builds the networks in the policy's scope
    gan = prepared.gan
    batches = prepared.source.dataset().take(2 * prepared.per_step).batch(prepared.per_step)
    history = gan.fit(batches, epochs=1, steps_per_epoch=2, verbose=0).history
    conv = next(layer for layer in gan.generator.layers if isinstance(layer, keras.layers.Conv2D))
    out = gan.generator(tf.zeros((1, 128)))
    logit = gan.discriminator(tf.zeros((1, 32, 32, 1)))
    # D's spectrally normalized weights stay float32 numbers, not bfloat16 ones written back.
    kernels = [layer.kernel.numpy() for layer in gan.discriminator._flatten_layers()
               if isinstance(layer, keras.layers.SpectralNormalization)]
    rounded = [tf.cast(tf.cast(k, tf.bfloat16), tf.float32).numpy() for k in kernels]
    exact = np.mean(np.concatenate([(k == r).ravel() for k, r in zip(kernels, rounded)]))
    assert all(np.isfinite(history[k][-1]) for k in ("d_loss", "g_loss"))
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert out.dtype == "float32" and logit.dtype == "float32"
    assert exact < 0.1  # about 1 in 65,536 float32 values is a bfloat16 one


@pytest.mark.slow
def test_two_replicas_train_the_resnet_as_one_device():
    (result,) = run_script(SAME_AS_ONE_DEVICE, json.dumps(
        [{"arch": "resnet:width=8,attention=16", "loss": "hinge"}]), "mirrored")
    assert result["replicas"] == 2 and result["steps_done"] == 4
    assert result["moved"] > 1e-2
    # D's sum over positions makes its bias gradients 1-8 in size: after one step the two
    # runs' weights agree to 1e-5 of that (float32 summing in another order), and Adam and the
    # power iteration carry it to about 0.5% after four. Measured: no BatchNorm or attention
    # statistic is per replica (that would show in the losses, equal here to 1e-4).
    assert result["max_diff"] < 2e-2, result
    one, two = result["logs"]
    for name, value in one.items():
        assert two[name] == pytest.approx(value, rel=1e-3, abs=1e-4), name


def test_architecture_settings_are_checked_and_become_params(cli, workdir):
    bad = cli("run", "--plugin", "sngan", "--arch", "resnet:widht=4", *TINY)
    assert bad.exit_code == 2
    assert "widht" in bad.stderr and "width" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    listed = cli("plugins")
    assert "resnet[:SETTINGS]" in listed.stdout and "attention: int >= 0, default 0" in \
        listed.stdout


@pytest.mark.slow
def test_sngan_trains_registers_and_samples(cli, workdir):
    result = cli("run", "--plugin", "sngan", "--arch", "resnet:width=4", "--d-steps", "2",
                 *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    params = run.data.params
    assert params["loss"] == "hinge" and params["d_steps"] == "2"
    assert params["arch.width"] == "4" and params["arch.sn"] == "True"
    assert params["g_optimizer.beta1"] == "0.0" and params["g_optimizer.beta2"] == "0.9"
    assert np.isfinite(run.data.metrics["eval/fid"])
    out = cli("sample", "models:/sngan-generator@latest", "-n", "6", "--npz", "-o", "s.npz")
    assert out.exit_code == 0, out.output
    samples = np.load(workdir / "s.npz")["samples"]
    assert samples.shape == (6, 32, 32, 1) and np.isfinite(samples).all()


def test_biggan_generator_takes_a_shared_embedding_and_a_hierarchical_latent(tmp_path):
    arch = ResNet(width=4, g_sn=True, init="orthogonal", shared=8, hierarchical=True)
    g = arch.build_generator(spec(32, 1), 20, num_classes=10)
    # One shared class embedding, not one per BatchNorm.
    assert sum(isinstance(layer, keras.layers.Embedding) for layer in g.layers) == 1
    z = tf.random.normal((2, 20), seed=7)
    labels = tf.constant([2, 2])
    out = g([z, labels], training=False).numpy()
    # z is split into 4 chunks of 5 (the 4x4 map's and one per resolution): the last
    # resolution's chunk alone changes the image, and so does the label.
    last = z.numpy().copy()
    last[:, 15:] += 1.0
    assert np.abs(g([tf.constant(last), labels], training=False).numpy() - out).max() > 1e-4
    assert np.abs(g([z, tf.constant([5, 5])], training=False).numpy() - out).max() > 1e-4
    g.save(tmp_path / "g.keras")  # the latent's slices and the dense gains load back
    loaded = keras.saving.load_model(tmp_path / "g.keras")
    np.testing.assert_allclose(loaded([z, labels], training=False), out, atol=1e-6)


@pytest.mark.parametrize("arch, latent, message", [
    (ResNet(hierarchical=True), 64, "hierarchical=true with --conditional needs a shared "
                                    "class embedding: add shared=N"),
    (ResNet(hierarchical=True, shared=8), 3, "splits z into 4 chunks, and --latent-dim is 3"),
])
def test_biggan_settings_that_cannot_work_are_refused(arch, latent, message):
    with pytest.raises(ganflow.UsageError, match=message):
        arch.build_generator(spec(32, 1), latent, num_classes=10)


def test_the_orthogonal_regularizer_against_a_hand_computation(plugins):
    from types import SimpleNamespace

    regularizer = plugins.component(plugins.regularizers, "orthogonal:beta=0.5",
                                    "--regularizer").build()
    assert regularizer.network == "generator"
    dense = keras.layers.Dense(3)
    conv = keras.layers.Conv2D(2, 2)
    g = keras.Sequential([keras.Input((2,)), dense, keras.layers.Reshape((1, 1, 3)),
                          keras.layers.UpSampling2D(2), conv])
    w = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]], np.float32)  # (fan-in 2, 3 filters)
    dense.kernel.assign(w)
    k = np.arange(24, dtype=np.float32).reshape(2, 2, 3, 2) / 10  # (2, 2, in 3, 2 filters)
    conv.kernel.assign(k)

    def off_diagonal(m):  # m: (fan-in, filters)
        gram = m.T @ m
        return np.sum((gram * (1 - np.eye(len(gram)))) ** 2)

    expected = 0.5 * 0.5 * (off_diagonal(w) + off_diagonal(k.reshape(-1, 2)))
    value = float(regularizer(SimpleNamespace(generator=g)))
    assert value == pytest.approx(expected, rel=1e-5)
    assert off_diagonal(w) == pytest.approx(2 * 2**2 + 2 * 3**2)  # filters 0-1 and 1-2 meet
    dense.kernel.assign(np.eye(2, 3, dtype=np.float32))  # orthogonal filters: nothing left
    conv.kernel.assign(np.zeros((2, 2, 3, 2), np.float32))
    assert float(regularizer(SimpleNamespace(generator=g))) == 0.0


@pytest.mark.slow
def test_biggan_trains_registers_and_samples_a_class(cli, workdir):
    result = cli("run", "--plugin", "biggan", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    params, metrics = run.data.params, run.data.metrics
    assert params["conditional"] == "True" and params["ema"] == "0.999"
    assert params["arch.shared"] == "32" and params["arch.hierarchical"] == "True"
    assert params["regularizer.orthogonal.beta"] == "0.0001"
    assert metrics["reg/orthogonal"] > 0 and np.isfinite(metrics["eval/fid"])
    out = cli("sample", "models:/biggan-generator@latest", "--class", "3", "-n", "4", "--npz",
              "-o", "three.npz")
    assert out.exit_code == 0, out.output
    arrays = np.load(workdir / "three.npz")
    assert arrays["samples"].shape == (4, 32, 32, 1) and list(arrays["labels"]) == [3] * 4
