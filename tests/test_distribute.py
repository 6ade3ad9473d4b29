"""Training under tf.distribute: MirroredStrategy over 2 logical CPU devices (standing in for
2 GPUs) against one device, and mixed precision. Each case runs in its own process: devices
and op determinism are set once per process, before TensorFlow starts."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from mlflow import MlflowClient

import ganflow
from ganflow.data import training_pipeline
from ganflow.devices import dtype_policy

from conftest import TINY
from test_gan import SHAPE, numbered_source
from test_step import compile_gan, linear_discriminator

# Trains the dcgan recipe on the digits for 4 steps of a global batch of 16, on one device and
# on 2 replicas of 8 each, from the same seed (same initial weights, data and noise), and
# prints the largest difference of any weight (G, D, the EMA copy, both optimizers) and the
# noise each replica drew in the first step.
SAME_AS_ONE_DEVICE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from ganflow import devices
    devices.split_cpu(2)
    import tensorflow as tf
    from ganflow.plugins import load_plugins
    from ganflow.runner import prepare, resolve_config

    plugins = load_plugins()
    flags = json.loads(sys.argv[1])

    def train(strategy):
        config = resolve_config(plugins, "dcgan", None, {
            **flags, "batch_size": 16, "eval_every": 0, "ema": 0.9, "strategy": strategy})
        prepared = prepare(config, plugins)
        gan = prepared.gan
        start = [v.numpy() for v in gan.generator.weights]
        # The same global batches in the same order for both: the first examples, unshuffled.
        batches = prepared.source.dataset().take(4 * prepared.per_step).batch(
            prepared.per_step)
        logs = gan.fit(batches, epochs=1, steps_per_epoch=4, verbose=0).history
        weights = [v.numpy() for v in (gan.generator.weights + gan.discriminator.weights
                   + gan.ema_generator.weights + gan.d_optimizer.variables
                   + gan.g_optimizer.variables)]
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(start, weights))
        return gan, weights, {k: v[-1] for k, v in logs.items()}, moved

    tf.config.experimental.enable_op_determinism()
    one, one_weights, one_logs, moved = train("default")
    two, two_weights, two_logs, _ = train("mirrored")
    print(json.dumps({
        "replicas": two.distribute_strategy.num_replicas_in_sync,
        "weights": len(one_weights),
        "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, two_weights)),
        "moved": moved,
        "steps_done": int(two.steps_done.numpy()),
        "logs": [one_logs, two_logs],
    }))
""")


def run_script(script, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flags", [
    {},  # the recipe: non-saturating loss with R1, a gradient penalty (double backprop)
    {"loss": "wgan:gp=0", "regularizers": ["r2:gamma=1,every=2"]},  # lazy, on fakes
], ids=["non-saturating+r1", "wgan+lazy-r2"])
def test_two_replicas_train_as_one_device_on_the_same_global_batch(flags):
    result = run_script(SAME_AS_ONE_DEVICE, json.dumps(flags))
    assert result["replicas"] == 2
    assert result["steps_done"] == 4  # a global step counts once, not once per replica
    assert result["moved"] > 1e-3  # it trained
    assert result["max_diff"] < 1e-5, result  # every weight and optimizer slot
    one, two = result["logs"]
    for name, value in one.items():  # metrics are global means, not per-replica values
        assert two[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


class TinyLoss(ganflow.StepLoss):
    """The non-saturating loss times 1e-8: in float16 (smallest step 6e-8) its gradients
    underflow to zero unless the loss is scaled up first."""

    def d_loss(self, step):
        return 1e-8 * (ops.mean(ops.softplus(-step.real_logits))
                       + ops.mean(ops.softplus(step.fake_logits)))

    def g_loss(self, step):
        return 1e-8 * ops.mean(ops.softplus(-step.fake_logits))


def test_float16_trains_where_its_unscaled_gradients_underflow():
    moved = {}
    for policy in ("float32", "mixed_float16"):
        with dtype_policy(policy):
            gan = compile_gan(TinyLoss(), lr=1e6)
        start = gan.discriminator.get_weights()[0].copy()
        gan.fit(training_pipeline(numbered_source(16), 4, seed=0), epochs=1, steps_per_epoch=2,
                verbose=0)
        moved[policy] = gan.discriminator.get_weights()[0] - start
    # ganflow wrapped both optimizers in a LossScaleOptimizer, as Keras's compile does for one.
    assert isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.abs(moved["float32"]).max() > 1e-3
    np.testing.assert_allclose(moved["mixed_float16"], moved["float32"], rtol=0.02,
                               atol=1e-3 * np.abs(moved["float32"]).max())
    # Without the scaling, the same loss's float16 gradients are exactly zero.
    with dtype_policy("mixed_float16"):
        discriminator = linear_discriminator()
    x = np.random.default_rng(0).uniform(-1, 1, (4, *SHAPE)).astype("float32")
    with tf.GradientTape() as tape:
        loss = 1e-8 * ops.mean(ops.softplus(ops.cast(discriminator(x), "float32")))
    grads = tape.gradient(loss, discriminator.trainable_variables)
    assert all(not np.any(g.numpy()) for g in grads)


def test_precision_auto_is_bfloat16_where_the_cpu_has_it():
    from ganflow.devices import cpu_has_bfloat16, resolve_precision

    assert resolve_precision("float32") == "float32"
    expected = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    assert resolve_precision("auto") == expected


def ganflow(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ganflow", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ganflow_run_on_two_replicas_logs_registers_and_resumes(workdir):
    done = ganflow("run", *TINY, "--eval-every", "0", "--strategy", "mirrored",
                   "--cpu-devices", "2", "--ema", "0.99", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params = run.data.params
    assert (params["strategy"], params["replicas"], params["dtype_policy"]) == (
        "mirrored", "2", "float32")
    # A step counts once: 2 epochs of 3 steps, each epoch's mean logged at its last step.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/mean_d_loss")]
    assert steps == [3, 6]
    (version,) = client.search_model_versions("name = 'dcgan-generator'")
    assert version.run_id == run.info.run_id
    assert (workdir / "ganflow-runs" / run.info.run_id / "checkpoints").is_dir()
    sampled = ganflow("sample", "models:/dcgan-generator@latest", "-n", "4", "-o", "s.png",
                      cwd=workdir)
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    # Resumed, it restores the mirrored variables from the checkpoint and goes on, on 2
    # replicas again (the run's settings), logging no step twice.
    resumed = ganflow("resume", run.info.run_id, "--epochs", "3", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/mean_d_loss")]
    assert steps == [3, 6, 9]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "15"], "--batch-size 15 does not split evenly between 2 replicas: use "
                             "a multiple of 2"),
    (["--jit", "on"], "--jit on with --strategy mirrored works on GPUs, not on CPU devices"),
])
def test_what_two_cpu_replicas_cannot_do_is_one_line(workdir, args, message):
    done = ganflow("run", *TINY, "--strategy", "mirrored", "--cpu-devices", "2", *args,
                   cwd=workdir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: {message}")
    assert not (workdir / "mlflow.db").exists()  # nothing started
