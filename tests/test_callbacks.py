"""The callbacks that log a run while it trains: metric windows and epoch means."""

from types import SimpleNamespace

import keras
import mlflow
from mlflow import MlflowClient

from ganflow.callbacks import MlflowLogger
from ganflow.outbox import Outbox


def test_windows_are_exact_means_of_the_updates_in_them(workdir):
    per_step = [1.0, 3.0, 5.0, 7.0, 9.0]  # one epoch of 5 steps, then a second epoch
    d_loss, lazy = keras.metrics.Mean(name="d_loss"), keras.metrics.Mean(name="reg/lazy")
    steps = keras.Variable(0, dtype="int64")
    mlflow.set_experiment("windows")  # not an experiment id left by another test's store
    with mlflow.start_run() as run:
        outbox = Outbox(run.info.run_id)
        logger = MlflowLogger(outbox, log_every=2, steps_per_epoch=5, samples_dir=workdir,
                              view=None)
        logger.set_model(SimpleNamespace(metrics=[d_loss, lazy], steps_done=steps))
        for epoch in range(2):
            for tracker in (d_loss, lazy):
                tracker.reset_state()  # as Keras does at each epoch's start
            logger.on_epoch_begin(epoch)
            for b in range(5):
                steps.assign_add(1)  # as the training step does
                d_loss.update_state(per_step[b] + 10 * epoch)
                # A lazy regularizer that runs on steps 1 and 4 of each epoch (0-based) only.
                lazy.update_state(100.0 * (b + 1), sample_weight=float(b in (1, 4)))
                logger.on_train_batch_end(b)
        assert outbox.flush(timeout=60) and not outbox.close()
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "d_loss")
    assert [(m.step, m.value) for m in history] == [
        (2, 2.0), (4, 6.0), (5, 9.0), (7, 12.0), (9, 16.0), (10, 19.0)
    ]
    # Each window holds the mean over the updates the regularizer ran in; none: not logged.
    lazy_history = client.get_metric_history(run.info.run_id, "reg/lazy")
    assert [(m.step, m.value) for m in lazy_history] == [(2, 200.0), (5, 500.0), (7, 200.0),
                                                         (10, 500.0)]


def test_an_epoch_that_ends_as_the_run_stops_is_logged_and_one_stopped_inside_is_not(workdir):
    # The tracking store away, the run stops at an epoch's last step: a resume starts after
    # that epoch, so its mean must be logged now. Stopped inside an epoch (or diverged in its
    # last step), it is not.
    steps = keras.Variable(0, dtype="int64")
    drawn = []
    model = SimpleNamespace(metrics=[], steps_done=steps, stop_training=False,
                            sampling_generator=None)
    mlflow.set_experiment("epoch-ends")
    with mlflow.start_run() as run:
        outbox = Outbox(run.info.run_id)
        logger = MlflowLogger(outbox, log_every=5, steps_per_epoch=5, samples_dir=workdir,
                              view=lambda g, path, title: (drawn.append(title) or path, {}))
        logger.set_model(model)
        for epoch, (stop_after, loss) in enumerate([(5, 1.0), (3, 2.0), (5, float("nan"))]):
            steps.assign(epoch * 5 + stop_after)
            model.stop_training = True
            logger.on_epoch_end(epoch, {"d_loss": loss})
        assert outbox.flush(timeout=60) and not outbox.close()
    history = MlflowClient().get_metric_history(run.info.run_id, "epoch/mean_d_loss")
    assert [(m.step, m.value) for m in history] == [(5, 1.0)]
    assert drawn == ["epoch 1"]
