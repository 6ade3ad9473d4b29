"""ADA: the pipeline's operations, its exact gradient, the adaptation of p, p as training state
that a resumed run keeps, and no leak of the augmentations into G's samples below p = 0.8."""

import json

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient

import ganflow
from ganflow.errors import UsageError
from ganflow_plugins.ada import ADA, resample

from conftest import TINY


def seeds(seed=0):
    return keras.random.SeedGenerator(seed)


def asymmetric(n=64, side=8):
    """Images with a bright left half and a dark right half, each a little different."""
    x = -np.ones((n, side, side, 1), np.float32)
    x[:, :, : side // 2] = 1.0
    return x + np.random.default_rng(0).normal(0, 0.01, x.shape).astype(np.float32)


def test_at_p_0_the_pipeline_leaves_images_alone():
    x = tf.constant(asymmetric(16) * 0.7)
    np.testing.assert_allclose(ADA(p=0.0)(x, seeds()).numpy(), x.numpy(), atol=1e-6)


def test_x_flip_at_p_1_flips_half_the_images_exactly():
    x = asymmetric(64)
    y = ADA(p=1.0, pipe="xflip")(tf.constant(x), seeds()).numpy()
    flipped = [np.array_equal(b, a[:, ::-1]) for a, b in zip(x, y)]
    kept = [np.array_equal(b, a) for a, b in zip(x, y)]
    assert all(f or k for f, k in zip(flipped, kept))  # exact: blitting resamples nothing
    assert 20 < sum(flipped) < 44  # each image flipped with probability 1/2


def test_integer_translation_moves_pixels_by_whole_pixels_with_mirrored_borders():
    x = np.zeros((32, 16, 16, 1), np.float32)
    x[:, 7, 9] = 1.0
    y = ADA(p=1.0, pipe="xint")(tf.constant(x), seeds()).numpy()
    shifts = set()
    for image in y:
        rows, cols = np.nonzero(image[..., 0] > 0.5)
        assert np.all(np.isin(image, (0.0, 1.0)))  # no interpolation
        shifts.add((int(rows[0]) - 7, int(cols[0]) - 9))
    assert all(abs(dr) <= 2 and abs(dc) <= 2 for dr, dc in shifts) and len(shifts) > 5


def test_the_resampling_gradient_is_exact_and_differentiable_again():
    # For a linear map y = A x the gradient of sum(w * y) is A^T w: compare it with the
    # gradient autodiff gives, on a fractional rotation and shift.
    theta = 0.3
    g = tf.constant([[[np.cos(theta), np.sin(theta), 0.4], [-np.sin(theta), np.cos(theta), -0.7],
                      [0, 0, 1]]], tf.float32)
    x = tf.random.stateless_normal((1, 6, 6, 2), (1, 2))
    w = tf.random.stateless_normal((1, 6, 6, 2), (3, 4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(w * resample(x, g))
    grad = tape.gradient(total, x).numpy().ravel()
    columns = []
    for i in range(x.shape.num_elements()):
        e = np.zeros(x.shape.num_elements(), np.float32)
        e[i] = 1.0
        columns.append(resample(tf.constant(e.reshape(x.shape)), g).numpy().ravel())
    np.testing.assert_allclose(grad, np.stack(columns, 1).T @ w.numpy().ravel(), atol=1e-5)
    # R1 takes a gradient of a gradient: through the resampling it must exist and be finite.
    v = tf.Variable(tf.ones((1, 6, 6, 2)))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(x)
            score = tf.reduce_sum(v * resample(x, g) ** 2)
        r1 = tf.reduce_sum(inner.gradient(score, x) ** 2)
    second = outer.gradient(r1, v)
    assert second is not None and np.isfinite(second.numpy()).all() and \
        np.abs(second.numpy()).sum() > 0


def test_colour_operations_on_rgb_and_grey_images_change_each_example():
    for channels in (3, 1):
        x = tf.fill((8, 4, 4, channels), 0.2)
        y = ADA(p=1.0, pipe="color")(x, seeds()).numpy()
        assert y.shape == (8, 4, 4, channels)
        assert len({round(float(v), 4) for v in y.mean(axis=(1, 2, 3))}) == 8


def test_p_moves_towards_the_target_at_the_speed_kimg_sets():
    ada = ADA(target=0.6, kimg=0.1, interval=2)  # p changes by images / 100 per adjustment

    def update(logit):
        ada.observe(ganflow.Step.from_logits(np.full((10, 1), logit), np.zeros((10, 1))))
        return float(ada.state["p"].numpy()), float(ada.state["r_t"].numpy())

    assert update(3.0) == (0.0, 0.0)  # not yet an interval
    assert update(2.0) == pytest.approx((0.2, 1.0))  # r_t = 1 > 0.6: up by 20 / 100
    update(1.0)
    assert update(1.0) == pytest.approx((0.4, 1.0))
    update(-1.0)
    assert update(-1.0) == pytest.approx((0.2, -1.0))  # D no longer overfits: down
    update(-1.0)
    assert update(-1.0)[0] == 0.0  # and never below 0
    update(-1.0)
    assert update(-1.0)[0] == 0.0
    fixed = ADA(p=0.3)
    fixed.observe(ganflow.Step.from_logits(np.ones((4, 1)), np.zeros((4, 1))))
    assert float(fixed.state["p"].numpy()) == pytest.approx(0.3)  # a given p stays


def test_an_unknown_operation_is_one_line(plugins):
    component = plugins.component(plugins.augmentations, "ada:pipe=xflip+spin", "--augment")
    with pytest.raises(UsageError, match=r"^--augment ada: pipe 'xflip\+spin': no operation "
                                         r"spin; the pipes are blit, geom, color, bg, bgc"):
        component.build()


def test_p_is_logged_and_a_resumed_run_goes_on_with_it(cli, workdir):
    def state(run_id):
        reader = tf.train.load_checkpoint(str(workdir / "ganflow-runs" / run_id / "checkpoints"))
        return {key.split("/")[1]: float(reader.get_tensor(key))
                for key in reader.get_variable_to_shape_map()
                if key.startswith("plugin_state/") and key.endswith("VARIABLE_VALUE")}

    flags = ["--augment", "ada:kimg=1", "--eval-every", "0", "--deterministic", "--precision",
             "float32", "--log-every", "3", "--no-register", *TINY]
    assert cli("run", *flags, "--epochs", "3").exit_code == 0
    assert cli("run", *flags, "--epochs", "2").exit_code == 0
    whole, stopped = sorted(mlflow.search_runs(experiment_names=["ganflow"],
                                               output_format="list"),
                            key=lambda r: r.data.params["epochs"], reverse=True)
    client = MlflowClient()
    history = [(m.step, m.value) for m in client.get_metric_history(whole.info.run_id, "ada/p")]
    assert [s for s, _ in history] == [3, 6, 9] and history[-1][1] > 0
    assert {"ada/r_t", "epoch/mean_ada_p"} <= set(whole.data.metrics)
    # The loss, R1, then ADA: its state is the third plugin object's.
    assert set(state(stopped.info.run_id)) == {"2_p", "2_r_t", "2_signs", "2_images",
                                               "2_updates"}
    assert state(stopped.info.run_id)["2_p"] > 0  # p is in the checkpoint ...
    assert cli("resume", stopped.info.run_id, "--epochs", "3", "-q").exit_code == 0
    # ... and the resumed run goes on from it: it ends where the uninterrupted run ends.
    assert state(stopped.info.run_id) == state(whole.info.run_id)
    resumed = [m.value for m in client.get_metric_history(stopped.info.run_id, "ada/p")]
    assert resumed == [v for _, v in history]
    assert json.loads(client.get_run(stopped.info.run_id).data.tags["ganflow.config"])[
        "augment"] == ["ada:kimg=1"]


@pytest.mark.parametrize("p, separable", [(0.5, True), (0.79, True), (1.0, False)])
def test_below_p_1_the_augmented_data_still_tells_the_orientation(p, separable):
    # Why ADA does not leak below p = 0.8 (and in principle below 1): x-flip at p flips an
    # image with probability p / 2, so the augmented data are bright on the left 1 - p / 2 of
    # the time and a G bright on the right p / 2 of the time: D can still tell them apart, and
    # G is pushed to the data's orientation. At p = 1 both are 1/2: G would be free to leak.
    x = asymmetric(4000)
    real = ADA(p=p, pipe="xflip")(tf.constant(x), seeds(1)).numpy()
    fake = ADA(p=p, pipe="xflip")(tf.constant(x[:, :, ::-1]), seeds(2)).numpy()

    def left(images):
        return float(np.mean(images[:, :, :4].mean(axis=(1, 2, 3)) >
                             images[:, :, 4:].mean(axis=(1, 2, 3))))

    assert left(real) == pytest.approx(1 - p / 2, abs=0.03)
    assert left(fake) == pytest.approx(p / 2, abs=0.03)
    assert (left(real) - left(fake) > 0.15) == separable


@pytest.mark.slow
def test_trained_with_ada_below_p_0_8_g_keeps_the_data_s_orientation():
    # The data: always bright on the left; D sees real and fake flipped with probability p/2.
    # A G trained so must not learn the flipped images (the "leak" of the augmentations into
    # G's samples that the paper sees at high p).
    from ganflow.data import training_pipeline
    from ganflow.gan import GAN
    from ganflow_plugins.losses import NonSaturatingLoss

    keras.utils.set_random_seed(0)
    side, latent = 8, 8
    generator = keras.Sequential([keras.Input((latent,)), keras.layers.Dense(64, "relu"),
                                  keras.layers.Dense(side * side, "tanh"),
                                  keras.layers.Reshape((side, side, 1))])
    discriminator = keras.Sequential([keras.Input((side, side, 1)), keras.layers.Flatten(),
                                      keras.layers.Dense(64), keras.layers.LeakyReLU(0.2),
                                      keras.layers.Dense(1)])
    gan = GAN(generator, discriminator, latent, seed=0,
              augment=ganflow.step.Augmentations([ADA(p=0.5, pipe="xflip")]))
    gan.compile(keras.optimizers.Adam(2e-3, 0.5), keras.optimizers.Adam(2e-3, 0.5),
                NonSaturatingLoss(), jit_compile=False)
    gan.fit(training_pipeline(ganflow.DataSource.from_arrays(asymmetric(512)), 64, 0),
            epochs=1, steps_per_epoch=600, verbose=0)
    samples = gan.generator.predict(np.random.default_rng(1).normal(
        size=(1000, latent)).astype(np.float32), verbose=0)
    left = samples[:, :, : side // 2].mean(axis=(1, 2, 3))
    right = samples[:, :, side // 2 :].mean(axis=(1, 2, 3))
    assert np.mean(left > right) > 0.95


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_ada_trains_under_mixed_precision_with_r1(cli, workdir, precision):
    # The recipe's R1 differentiates D's gradient through the augmentation of the reals, in
    # the networks' low precision (float16 loss-scaled).
    result = cli("run", *TINY, "--augment", "ada:p=0.5", "--precision", precision,
                 "--eval-every", "0", "--no-register")
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    metrics = run.data.metrics
    assert run.data.params["dtype_policy"] == precision
    assert metrics["ada/p"] == pytest.approx(0.5)
    assert all(np.isfinite(metrics[k]) for k in ("d_loss", "g_loss", "reg/r1"))
    assert metrics["reg/r1"] > 0


@pytest.mark.slow
def test_the_issue_s_command_stopped_by_sigterm_resumes_with_the_same_p(tmp_path):
    # `ganflow run --plugin dcgan --augment ada --data-fraction 0.1`, shortened, with p quick
    # to move: stopped by SIGTERM mid-run, resumed, it ends where an uninterrupted run ends,
    # p's history the same step by step.
    import signal

    from test_checkpoints import STEPPED, ganflow, the_run, wait_for_step, write_plugin

    plugin = write_plugin(tmp_path / "stepped.py", STEPPED)
    args = ["run", "--plugin", "dcgan", "--augment", "ada:kimg=0.2,interval=1",
            "--data-fraction", "0.1", "--plugin-module", plugin, "--loss", "stepped",
            "--epochs", "3", "--steps-per-epoch", "8", "--batch-size", "8", "--log-every", "1",
            "--eval-every", "0", "--samples", "4", "--no-register", "-q", "--deterministic",
            "--precision", "float32"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    assert ganflow(*args, workdir=whole, pause=0.001).returncode == 0
    proc = ganflow(*args, workdir=broken, pause=0.2, wait=False)
    run_id = wait_for_step(broken, 10, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode == 130
    stopped = int(the_run(broken)[0].data.tags["ganflow.stopped_at_step"])
    assert 10 <= stopped < 24
    assert ganflow("resume", run_id, "-q", workdir=broken).returncode == 0

    def p_history(workdir):
        (run,) = the_run(workdir)
        client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "ada/p")]

    ours, theirs = p_history(broken), p_history(whole)
    assert [s for s, _ in ours] == list(range(1, 25))
    assert ours == theirs and max(v for _, v in ours) > 0.1  # p moved, and resumed as it was
