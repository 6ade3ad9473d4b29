"""Differentiable augmentation (DiffAugment): what each operation does, that gradients pass,
and that it reaches every input of D while training, real and fake, in both updates."""

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from ganflow.data import training_pipeline
from ganflow.gan import GAN
from ganflow_plugins.augment import Color, Cutout, Translation
from ganflow_plugins.losses import NonSaturatingLoss

from conftest import TINY
from test_gan import LATENT, RecordingDiscriminator, numbered_source, tiny_generator


def seeds():
    return keras.random.SeedGenerator(0)


@pytest.mark.parametrize("augment", [Color(), Translation(0.125), Cutout(0.5)])
def test_shape_kept_and_gradients_pass(augment):
    x = tf.random.normal((6, 16, 16, 3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = augment(x, seeds())
        total = ops.sum(y * y)
    assert tuple(y.shape) == (6, 16, 16, 3) and y.dtype == x.dtype
    gradient = tape.gradient(total, x)
    assert gradient is not None and np.isfinite(gradient.numpy()).all()
    assert np.abs(gradient.numpy()).sum() > 0


def test_color_changes_each_example_differently():
    y = Color()(tf.fill((8, 4, 4, 3), 0.2), seeds()).numpy()
    assert len({round(float(v), 5) for v in y.mean(axis=(1, 2, 3))}) == 8


def test_translation_shifts_each_image_by_at_most_its_ratio():
    side, ratio = 16, 0.125  # shifts of up to 2 pixels each way
    x = np.zeros((32, side, side, 1), np.float32)
    x[:, 7, 9] = 1.0
    y = Translation(ratio)(tf.constant(x), seeds()).numpy()
    shifts = set()
    for image in y:
        (row,), (col,) = np.nonzero(image[..., 0] == 1.0)
        shifts.add((row - 7, col - 9))
        assert np.count_nonzero(image) == 1
    assert all(abs(dr) <= 2 and abs(dc) <= 2 for dr, dc in shifts)
    assert len(shifts) > 5  # per example, not one shift for the batch


def test_translation_pads_with_zeros():
    y = Translation(0.5)(tf.ones((64, 8, 8, 1)), seeds()).numpy()
    zeros = (y == 0).reshape(64, -1).sum(1)
    # A shift of (a, b) brings in 8|a| + 8|b| - |a||b| zeros, with |a|, |b| <= 4.
    possible = {8 * abs(a) + 8 * abs(b) - abs(a * b) for a in range(-4, 5) for b in range(-4, 5)}
    assert set(zeros) <= possible and len(set(zeros)) > 5
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_cutout_zeros_one_square_of_the_ratio():
    side, ratio = 16, 0.5
    y = Cutout(ratio)(tf.ones((64, side, side, 1)), seeds()).numpy()[..., 0]
    size = 8
    for image in y:
        rows, cols = np.nonzero(image == 0)
        assert len(rows) <= size * size
        if len(rows):  # a rectangle: the zeros fill their bounding box
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box == len(rows)
    assert ((y == 0).reshape(64, -1).sum(1) == size * size).sum() > 10


def test_every_input_of_d_is_augmented_in_both_updates():
    d = RecordingDiscriminator()
    keras.utils.set_random_seed(0)
    gan = GAN(tiny_generator(), d, LATENT, d_steps=1, seed=0,
              augment=lambda x, seed_generator: Cutout(0.5)(x, seed_generator))
    gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), NonSaturatingLoss(),
                run_eagerly=True)
    d.seen.clear()
    gan.fit(training_pipeline(numbered_source(24), 4, seed=0), epochs=1, steps_per_epoch=3,
            verbose=0)
    assert len(d.seen) == 3 * 3  # per step: real and fake in the D update, fake in G's
    for batch in d.seen:  # the 2x2 cutout of a 4x4 image zeroes some pixels of each batch
        assert (batch == 0).any()


def test_augment_through_the_cli(cli, workdir):
    result = cli("run", "--augment", "translation:ratio=0.25", "--augment", "cutout",
                 "--augment", "color", "--no-register", "--regularizer", "none",
                 "--eval-every", "0", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert run.data.params["augment"] == "translation:ratio=0.25;cutout;color"
    assert (run.data.params["augment.translation.ratio"],
            run.data.params["augment.cutout.ratio"]) == ("0.25", "0.5")
    bad = cli("run", "--augment", "colour", *TINY)
    assert bad.exit_code == 2
    assert "unknown augmentation 'colour'; known: ada, color, cutout, translation" in bad.stderr


FLIP = '''
import keras
from keras import ops
import ganflow


def flip(x, seed_generator):
    """Mirror each image left-right with probability one half."""
    shape = (ops.shape(x)[0], 1, 1, 1)
    coin = keras.random.uniform(shape, seed=seed_generator) < 0.5
    return ops.where(coin, ops.flip(x, axis=2), x)


@ganflow.hookimpl
def ganflow_register_augmentations(register):
    register("flip", flip, "mirror left-right at random")
'''


@pytest.mark.slow
def test_a_third_party_augmentation(cli, workdir, tmp_path):
    path = tmp_path / "flip.py"
    path.write_text(FLIP)
    result = cli("run", "--plugin-module", str(path), "--augment", "flip", "--augment", "cutout",
                 "--no-register", "--regularizer", "none", "--eval-every", "0", *TINY)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    assert run.data.tags["ganflow.plugin.augment.flip"] == str(path)
