"""Several training steps per call into TensorFlow (``--steps-per-execution``): the host waits
on the device once per metric window instead of once per step, and the run is the same run."""

import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient

from ganflow import callbacks
from ganflow.errors import UsageError
from ganflow.runner import resolve_config, run, steps_per_call

# 2 epochs of 12 steps, a window every 6 and a checkpoint every 4: calls of 2 steps.
FLAGS = {"epochs": 2, "steps_per_epoch": 12, "log_every": 6, "checkpoint_every": 4,
         "batch_size": 32, "eval_every": 0, "samples": 100, "register": False}


GUARD_STEP = callbacks.DivergenceGuard.on_train_batch_end


def train(plugins, workdir, name, monkeypatch, **flags):
    calls = []
    monkeypatch.setattr(callbacks.DivergenceGuard, "on_train_batch_end",
                        lambda self, batch, logs=None: (calls.append(batch),
                                                        GUARD_STEP(self, batch, logs))[1])
    config = resolve_config(plugins, "toy", None, {
        **FLAGS, **flags, "tracking_uri": f"sqlite:///{workdir}/mlflow.db",
        "output_dir": str(workdir / name)})
    result = run(config, plugins, verbose=0)
    reader = tf.train.load_checkpoint(str(result.checkpoint.parent))
    weights = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
               if not k.startswith(("metrics/", "save_counter", "_CHECKPOINTABLE"))}
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    history = {key: [(m.step, m.value) for m in client.get_metric_history(result.run_id, key)]
               for key in ("d_loss", "g_loss", "epoch/mean_d_loss")}
    checkpoints = sorted(int(p.name.split("-")[1].split(".")[0])
                         for p in result.checkpoint.parent.glob("ckpt-*.index"))
    return calls, weights, history, checkpoints, result


def test_several_steps_per_call_train_and_log_as_one_step_per_call(plugins, workdir, monkeypatch):
    calls, weights, history, kept, result = train(plugins, workdir, "auto", monkeypatch)
    one_calls, one_weights, one_history, one_kept, _ = train(
        plugins, workdir, "one", monkeypatch, steps_per_execution=1)
    assert result.steps_done == 24
    # The callbacks (and the host's wait on the device) come once per call: 12 calls, not 24,
    # each at the last step of its call (Keras's batch index within the epoch).
    assert len(one_calls) == 24 and len(calls) == 12
    assert calls == [1, 3, 5, 7, 9, 11] * 2
    # The same windows and checkpoints, and the same training to float precision.
    assert [s for s, _ in history["d_loss"]] == [6, 12, 18, 24] == [
        s for s, _ in one_history["d_loss"]]
    assert [s for s, _ in history["epoch/mean_d_loss"]] == [12, 24]
    for key in history:
        np.testing.assert_allclose([v for _, v in history[key]],
                                   [v for _, v in one_history[key]], rtol=1e-5)
    assert kept == one_kept == [16, 20, 24]
    assert weights.keys() == one_weights.keys() and len(weights) > 10
    for name, value in weights.items():
        np.testing.assert_allclose(value, one_weights[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_steps_per_call_fit_between_windows_checkpoints_and_epoch_ends(plugins):
    def per_call(done=0, **flags):
        config = resolve_config(plugins, "toy", None, {**FLAGS, **flags})
        return steps_per_call(config, config.steps_per_epoch, done)

    assert per_call() == 2
    assert per_call(checkpoint_every=0) == 6
    # At most 32 by default: a signal is acted on within 32 steps.
    assert per_call(checkpoint_every=0, log_every=100, steps_per_epoch=1600) == 25
    assert per_call(checkpoint_every=0, log_every=128, steps_per_epoch=1024) == 32
    assert per_call(checkpoint_every=0, log_every=128, steps_per_epoch=1024,
                    steps_per_execution=64) == 64
    assert per_call(done=15, checkpoint_every=0) == 3  # a resumed run's partial epoch
    assert per_call(done=24, checkpoint_every=0) == 6  # whole epochs from there on
    assert per_call(steps_per_execution=1) == 1
    with pytest.raises(UsageError, match=r"^--steps-per-execution 4 does not divide the 2 steps "
                       r"between .* pass one of 1, 2$"):
        per_call(steps_per_execution=4)
    with pytest.raises(UsageError, match="--steps-per-execution must be at least 1, got 0"):
        per_call(steps_per_execution=0)
