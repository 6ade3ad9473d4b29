"""Several training steps per call into TensorFlow (``--steps-per-execution``): the host waits
on the device once per metric window instead of once per step, and the run is the same run."""

import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient

from ganflow import callbacks
from ganflow.errors import UsageError
from ganflow.prepare import steps_per_call
from ganflow.resolve import configure
from ganflow.runner import run

# 2 epochs of 12 steps, a window every 6 and a checkpoint every 4: calls of 2 steps.
FLAGS = {"epochs": 2, "steps_per_epoch": 12, "log_every": 6, "checkpoint_every": 4,
         "batch_size": 32, "eval_every": 0, "samples": 100, "register": False}


GUARD_STEP = callbacks.DivergenceGuard.on_train_batch_end


def train(plugins, workdir, name, monkeypatch, **flags):
    calls = []
    monkeypatch.setattr(callbacks.DivergenceGuard, "on_train_batch_end",
                        lambda self, batch, logs=None: (calls.append(batch),
                                                        GUARD_STEP(self, batch, logs))[1])
    config = configure(plugins, "toy", {
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
        config = configure(plugins, "toy", {**FLAGS, **flags})
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
    # Across replicas, one: Keras 3.15's loop of several steps per call fails there.
    for strategy in ("mirrored", "multiworker"):
        assert per_call(strategy=strategy, checkpoint_every=0) == 1
        with pytest.raises(UsageError, match=rf"^--steps-per-execution 2 with --strategy "
                                             rf"{strategy}: Keras 3.15 cannot run several "
                                             r"steps per call"):
            per_call(strategy=strategy, steps_per_execution=2)


def test_a_worker_s_callbacks_keep_in_step_and_log_nowhere(plugins, workdir):
    from ganflow import checkpoints
    from ganflow.fitting import Nowhere, callbacks_for
    from ganflow.prepare import prepare
    from ganflow.resolve import resolve

    prepared = prepare(resolve(configure(plugins, "toy", {**FLAGS, "eval_every": 1}), plugins))
    store = checkpoints.Checkpoints(prepared.gan, workdir / "scratch", 1)
    worker = callbacks_for(prepared, store, workdir / "scratch")
    assert worker.watch is None and worker.evaluations is None
    assert isinstance(worker.logger.outbox, Nowhere)
    assert [type(c).__name__ for c in worker] == ["DivergenceGuard", "MlflowLogger",
                                                  "CheckpointCallback"]
    assert worker.saver.every == 4  # --checkpoint-every, as the chief's


def test_a_fit_from_inside_an_epoch_finishes_it_then_trains_whole_epochs(plugins, workdir):
    import keras

    from ganflow.data import training_pipeline
    from ganflow.fitting import fit_from
    from ganflow.prepare import prepare
    from ganflow.resolve import resolve

    prepared = prepare(resolve(configure(plugins, "toy", FLAGS), plugins))
    epochs = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epochs.append([epoch, 0]),
        on_train_batch_end=lambda batch, logs: epochs[-1].__setitem__(1, epochs[-1][1] + 1))
    history = fit_from(prepared.gan, lambda skip: training_pipeline(
        prepared.source, prepared.per_step, 0).skip(skip), 15, 12, 3, [record], 0,
        lambda done: 3 if done % 12 else 6)
    # 9 steps left of epoch 1 (3 calls of 3), then epoch 2 whole (2 calls of 6).
    assert epochs == [[1, 3], [2, 2]]
    assert prepared.gan.steps_done.numpy() == 9 + 12 and prepared.gan.steps_per_execution == 6
    assert len(history.history["d_loss"]) == 1  # the last call's
