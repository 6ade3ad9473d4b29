"""Conditional GANs: labels reach both networks, the cdcgan recipe end to end (a (z, label)
generator, per-class grids, class accuracy), and spectral normalization in D."""

import json

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops
from PIL import Image

import ganflow
from ganflow.data import training_pipeline
from ganflow.gan import GAN
from ganflow_plugins.dcgan import DCGAN
from ganflow_plugins.losses import NonSaturatingLoss

from conftest import TINY

SHAPE = (4, 4, 1)
CLASSES = 3


class LabelledNetworks:
    """A tiny conditional pair; D records (examples, labels) pairs when run eagerly."""

    def __init__(self):
        self.seen = []

    def generator(self):
        z = keras.Input((2,))
        y = keras.Input((), dtype="int32")
        h = layers.Concatenate()([z, layers.Embedding(CLASSES, 2)(y)])
        return keras.Model([z, y], layers.Reshape(SHAPE)(layers.Dense(16, activation="tanh")(h)))

    def discriminator(self):
        x = keras.Input(SHAPE)
        y = keras.Input((), dtype="int32")
        core = keras.Model([x, y], layers.Dense(1)(layers.Concatenate()(
            [layers.Flatten()(x), layers.Embedding(CLASSES, 2)(y)])))
        seen = self.seen

        class Recording(keras.Model):
            def __init__(self):
                super().__init__()
                self.core = core

            def call(self, inputs, training=False):
                if tf.executing_eagerly() and training:
                    seen.append([ops.convert_to_numpy(t) for t in inputs])
                return self.core(inputs, training=training)

        return Recording()


def test_labels_reach_both_networks_and_fakes_are_made_for_them():
    n = 18
    x = np.stack([np.full(SHAPE, 10.0 + i, np.float32) for i in range(n)])
    source = ganflow.DataSource.from_arrays(x, np.arange(n) % CLASSES, num_classes=CLASSES)
    nets = LabelledNetworks()
    keras.utils.set_random_seed(0)
    gan = GAN(nets.generator(), nets.discriminator(), 2, d_steps=2, seed=0,
              num_classes=CLASSES, conditional=True)
    gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), NonSaturatingLoss(),
                run_eagerly=True)
    gan.fit(training_pipeline(source, 6, seed=0), epochs=1, steps_per_epoch=3, verbose=0)
    real = [(xs, ys) for xs, ys in nets.seen if xs.min() >= 10.0]
    fake = [(xs, ys) for xs, ys in nets.seen if xs.max() <= 1.0]
    assert len(real) == 2 * 3 and len(fake) == 3 * 3  # k D updates score both; G scores fakes
    for xs, ys in real:  # each real example with its own label
        np.testing.assert_array_equal((xs[:, 0, 0, 0] - 10).astype(int) % CLASSES, ys)
    # Each update's fakes are scored with the labels of that update's real examples: the D
    # updates' fakes with their own batch's, the G update's with the last D update's.
    for i in range(3):
        d1_real, d1_fake, d2_real, d2_fake, g_fake = nets.seen[5 * i: 5 * i + 5]
        np.testing.assert_array_equal(d1_fake[1], d1_real[1])
        np.testing.assert_array_equal(d2_fake[1], d2_real[1])
        np.testing.assert_array_equal(g_fake[1], d2_real[1])


@pytest.mark.parametrize("spectral_norm", [False, True], ids=["plain", "sn"])
def test_the_conditional_dcgan_uses_its_label(spectral_norm):
    # With spectral norm, Keras's wrapper cast the label embedding to the labels' int32, which
    # made the projection 0 for every class (ganflow.layers.SpectralNormalization fixes it).
    spec = ganflow.DataSpec((32, 32, 1), 100, num_classes=10)
    arch = DCGAN(sn=spectral_norm)
    keras.utils.set_random_seed(0)
    g, d = arch.build_generator(spec, 8, num_classes=10), arch.build_discriminator(spec, 10)
    z = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    a = g([z, np.zeros(4, np.int32)], training=False).numpy()
    b = g([z, np.full(4, 7, np.int32)], training=False).numpy()
    assert a.shape == (4, 32, 32, 1) and np.abs(a - b).max() > 1e-3
    # Projection: D(x, y) - D(x, y') = (embed(y) - embed(y')) . phi(x), linear in the embedding.
    scores = [d([a, np.full(4, c, np.int32)], training=False).numpy() for c in range(10)]
    assert len({float(s[0, 0]) for s in scores}) == 10
    assert any(isinstance(layer, layers.Embedding) for layer in d._flatten_layers())


def test_spectral_normalization_keeps_d_layers_at_norm_one(plugins):
    spec = ganflow.DataSpec((32, 32, 1), 100)
    _, arch = plugins.architecture("dcgan:sn")
    keras.utils.set_random_seed(0)  # the power iteration's start, and the weights
    d = arch.build_discriminator(spec)
    wrapped = [layer for layer in d.layers if isinstance(layer, layers.SpectralNormalization)]
    assert len(wrapped) == 4  # three convolutions and the final dense layer
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 1)).astype(np.float32)
    # Power iterations run in training calls, one a call; how many it takes depends on the
    # gap between the largest singular values (30 left 1.095 in one draw of the weights).
    for _ in range(100):
        d(x, training=True)
    for layer in wrapped:  # the weight the layer computes with, W / sigma(W)
        kernel = np.asarray(layer._normalized()[1]).reshape(-1, layer.kernel.shape[-1])
        assert np.linalg.svd(kernel, compute_uv=False)[0] == pytest.approx(1.0, abs=0.02)


def test_cdcgan_trains_registers_a_z_label_generator_and_samples_per_class(cli, workdir):
    result = cli("run", "--plugin", "cdcgan", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert run.data.params["conditional"] == "True"
    assert 0 <= run.data.metrics["eval/class_accuracy"] <= 1
    client = mlflow.MlflowClient()
    grid = workdir / "ganflow-runs" / run.info.run_id / "samples" / "epoch_0002.png"
    # 64 samples as 10 rows of 7, one row per class; 32-pixel tiles scaled 2x.
    assert Image.open(grid).size == (7 * 34 * 2 + 4, 10 * 34 * 2 + 4)
    assert client.get_model_version("cdcgan-generator", "1").tags["eval.class_accuracy"]

    one = cli("sample", "models:/cdcgan-generator@latest", "--class", "3", "-n", "5", "--npz",
              "-o", "three.npz")
    assert one.exit_code == 0, one.output
    arrays = np.load(workdir / "three.npz")
    assert arrays["samples"].shape == (5, 32, 32, 1) and list(arrays["labels"]) == [3] * 5
    every = cli("sample", "models:/cdcgan-generator@latest", "-n", "20", "-o", "all.png")
    assert every.exit_code == 0
    assert Image.open(workdir / "all.png").size == (2 * 34 * 2 + 4, 10 * 34 * 2 + 4)
    out_of_range = cli("sample", "models:/cdcgan-generator@latest", "--class", "10")
    assert out_of_range.exit_code == 2
    assert "this generator knows classes 0 to 9" in out_of_range.stderr

    report = json.loads(cli("evaluate", "models:/cdcgan-generator/1", "-n", "200",
                            "--json").stdout)
    assert 0 <= report["metrics"]["class_accuracy"] <= 1

    pyfunc = mlflow.pyfunc.load_model("models:/cdcgan-generator/1")
    images = pyfunc.predict({"z": np.zeros((2, 64), np.float32),
                             "label": np.array([1, 2], np.int32)})
    assert np.asarray(images).shape == (2, 32, 32, 1)


def test_a_grid_of_a_generator_with_many_classes_shows_one_sample_a_class(tmp_path):
    # A row per class made a 1,000-class generator's 64-sample grid 1,000 rows of one tile,
    # which MLflow refused to log ("height and width must be > 0").
    from ganflow import noise
    from ganflow.views import SampleView

    many = 1000
    source = ganflow.DataSource.from_arrays(np.zeros((4, *SHAPE), np.float32), np.arange(4),
                                            num_classes=many)
    z, y = keras.Input((2,)), keras.Input((), dtype="int32")
    h = layers.Concatenate()([z, layers.Embedding(many, 2)(y)])
    generator = keras.Model([z, y], layers.Reshape(SHAPE)(layers.Dense(16, "tanh")(h)))
    view = SampleView(source, 2, 64, seed=0, num_classes=many)
    assert list(view.labels) == list(range(64)) and view.columns is None
    path, _ = view(generator, tmp_path / "grid.png", "epoch 1")
    side = 8 * (4 + 2) + 2  # 8 tiles of 4 pixels a side, 2 pixels of padding around each
    assert Image.open(path).size == (side * 16, side * 16)  # scaled 16x to 64-pixel tiles
    # A few classes keep a row each; fewer samples than classes make no single column.
    assert noise.grid_columns(noise.class_rows(64, 10)) == 7
    assert noise.grid_columns(noise.class_rows(5, 10)[:5]) is None
    assert len(noise.class_rows(100, many)) == 100


def test_conditional_on_unlabelled_data_is_refused(cli, workdir):
    result = cli("run", "--conditional", "--dataset", "ring8", "--arch", "mlp", *TINY)
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: --conditional needs labelled data, and ring8 has "
                                     "no labels: drop --conditional, or use a labelled dataset")
    assert not (workdir / "mlflow.db").exists()


def test_an_architecture_without_conditional_networks_says_so(cli, workdir, tmp_path):
    from conftest import write_plugin

    path = write_plugin(tmp_path / "plain.py", """
import ganflow
from ganflow_plugins.dcgan import DCGAN

class Plain:
    def build_generator(self, spec, latent_dim):
        return DCGAN().build_generator(spec, latent_dim)

    def build_discriminator(self, spec):
        return DCGAN().build_discriminator(spec)

@ganflow.hookimpl
def ganflow_register_architectures(register):
    register("plain", Plain())
""")
    result = cli("run", "--plugin-module", path, "--arch", "plain", "--conditional", *TINY)
    assert result.exit_code == 2
    assert ("architecture plain builds no conditional networks (its build_generator takes no "
            "num_classes)") in result.stderr


DRIFT = '''
from keras import ops

import ganflow


class Drift:
    """Non-saturating, plus ProGAN's drift penalty 0.001 E[D(x)^2] on real data."""

    def discriminator_loss(self, real_logits, fake_logits):
        return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))

    def generator_loss(self, fake_logits):
        return ops.mean(ops.softplus(-fake_logits))

    def penalty(self, discriminator, real, fake):
        return 0.001 * ops.mean(ops.square(discriminator(real, training=True)))


@ganflow.hookimpl
def ganflow_register_losses(register):
    register("drift", Drift(), "non-saturating with a drift penalty")
'''


GAP = DRIFT + '''

class Gap(Drift):
    """A penalty that is 0 exactly when D sees real and fake inputs made equal."""

    def penalty(self, discriminator, real, fake):
        return ops.mean(ops.square(discriminator(real, training=True)
                                   - discriminator(fake, training=True)))


@ganflow.hookimpl
def ganflow_register_losses(register):
    register("drift", Drift(), "non-saturating with a drift penalty")
    register("gap", Gap(), "non-saturating with a penalty on D's real-fake gap")


@ganflow.hookimpl
def ganflow_register_augmentations(register):
    register("blank", lambda x, seed_generator: 0.0 * x, "every input of D made zeros")
'''


def test_a_logits_loss_penalty_sees_d_with_the_labels_and_the_augmentations(cli, workdir):
    # The penalty calls D on images alone; in a conditional run D also needs the labels (the
    # projection D cannot score an image without one), and in an augmented run its inputs go
    # through the augmentations, as every input of D does: blanked, real and fake score alike.
    path = str(workdir / "gap.py")
    (workdir / "gap.py").write_text(GAP)  # its second ganflow_register_losses is the one
    common = ["--plugin", "cdcgan", "--plugin-module", path, "--regularizer", "none",
              "--eval-every", "0", "--no-register", *TINY]
    for augment in (["--augment", "blank"], []):
        with pytest.warns(ganflow.GanflowDeprecationWarning,
                          match=r"^Gap.penalty\(discriminator, real, fake\) is deprecated"):
            result = cli("run", *common, "--loss", "gap", *augment)
        assert result.exit_code == 0, result.output
    runs = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    by_augment = {run.data.params.get("augment", ""): run.data.metrics for run in runs}
    assert by_augment["blank"]["reg/penalty"] == 0.0
    assert by_augment[""]["reg/penalty"] > 1e-6
