import time
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from ganflow.callbacks import MlflowLogger
from ganflow.outbox import Outbox
from ganflow.cli import ui_command
from ganflow.images import image_grid


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


def test_grid_tiles_with_padding_and_scales_small_images():
    images = np.full((5, 8, 8, 1), -1.0, np.float32)
    images[1] = 1.0
    grid = np.asarray(image_grid(images))
    # 3 columns x 2 rows of 8-pixel tiles, 2 px padding, scaled 8x to 64-pixel tiles.
    assert grid.shape == ((2 * 10 + 2) * 8, (3 * 10 + 2) * 8)
    assert grid[(2 + 4) * 8, (12 + 4) * 8] == 255 and grid[(2 + 4) * 8, (2 + 4) * 8] == 0


@pytest.mark.parametrize("uri, flag, expected", [
    ("http://127.0.0.1:5000", "", "http://127.0.0.1:5000/#/experiments/3/runs/abc"
                                  "?workflowType=machine_learning"),
    ("sqlite:////a/mlflow.db", " --tracking-uri sqlite:////a/mlflow.db",
     "ganflow ui --tracking-uri sqlite:////a/mlflow.db  (starts the MLflow UI on this store, "
     "at this run)"),
])
def test_ui_command(uri, flag, expected):
    assert ui_command(uri, "3", "abc", flag) == expected


def test_outbox_keeps_what_an_unreachable_store_missed_for_a_resume(workdir, monkeypatch):
    import socket
    import time

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = []
    box = Outbox("r1", MlflowClient(f"http://127.0.0.1:{port}"), warn=lines.append,
                 retry_every=0.05)
    box.log_metrics({"d_loss": 0.5, "g_loss": 2.0}, step=1)
    box.log_metrics({"d_loss": 0.25}, step=2)
    box.set_tags({"note": "kept"})
    deadline = time.monotonic() + 30
    while box.down_for() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.down_for() > 0 and not box.flush(timeout=0.0) and box.waiting == 3
    assert len(lines) == 1 and lines[0].startswith("Tracking store unreachable (connection ")
    assert box.save(workdir / "undelivered.jsonl") == 3

    mlflow.set_experiment("outbox")
    with mlflow.start_run() as run:
        pass
    assert Outbox.deliver(workdir / "undelivered.jsonl", run.info.run_id) == 3
    assert not (workdir / "undelivered.jsonl").exists()
    client = MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "d_loss")] == \
        [(1, 0.5), (2, 0.25)]
    assert client.get_run(run.info.run_id).data.tags["note"] == "kept"


def test_outbox_skips_a_call_the_store_refuses_and_goes_on(workdir):
    mlflow.set_experiment("outbox")
    with mlflow.start_run() as run:
        lines = []
        box = Outbox(run.info.run_id, warn=lines.append)
        box.log_metrics({"x": 1.0}, step=1)
        box.log_artifact(workdir / "no-such-file.png", "samples")  # refused: no such file
        box.log_metrics({"x": 2.0}, step=2)
        assert box.flush(timeout=30) and box.close() == []
    assert len(lines) == 1 and lines[0].startswith("MLflow refused a logging call, skipped")
    assert [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "x")] == [1.0, 2.0]


def test_outbox_sends_metric_windows_that_come_together_in_one_request(workdir):
    mlflow.set_experiment("outbox")
    with mlflow.start_run() as run:
        box = Outbox(run.info.run_id, linger=5.0)
        for step in range(1, 6):
            box.log_metrics({"d_loss": step / 10, "g_loss": step}, step=step)
            time.sleep(0.02)
        from PIL import Image

        Image.new("L", (8, 8)).save(workdir / "grid.png")
        box.log_image(workdir / "grid.png", "samples", step=5)  # not a metric: its own request
        started = time.monotonic()
        assert box.flush(timeout=30) and box.close() == []
        assert time.monotonic() - started < 5.0  # flush does not wait out the linger
        assert box.requests == 2 and box.delivered == 6
    history = MlflowClient().get_metric_history(run.info.run_id, "d_loss")
    assert [(m.step, m.value) for m in history] == [(s, s / 10) for s in range(1, 6)]


@pytest.mark.slow
def test_ganflow_ui_serves_the_store_and_points_at_the_newest_run(workdir):
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("ganflow")
        with mlflow.start_run():
            pass
        with mlflow.start_run() as newest:
            mlflow.log_metric("d_loss", 0.5, step=1)
    finally:
        mlflow.set_tracking_uri(None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ctrl-C as a terminal gives it: a suite started in the background (`pytest &`, nohup)
    # ignores SIGINT, and a child that inherits that would ignore the test's SIGINT.
    proc = subprocess.Popen([sys.executable, "-m", "ganflow", "ui", "--tracking-uri", uri,
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=workdir,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        base = f"http://127.0.0.1:{port}"
        assert lines[1].strip() == (
            f"newest run: {base}/#/experiments/{newest.info.experiment_id}/runs/"
            f"{newest.info.run_id}?workflowType=machine_learning")
        api = f"{base}/api/2.0/mlflow/runs/get?run_id={newest.info.run_id}"
        for _ in range(120):  # until the server answers
            try:
                with urllib.request.urlopen(api, timeout=2) as answer:
                    body = answer.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert '"d_loss"' in body
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    with socket.socket() as s:  # the server went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_grids_over_training_become_one_looping_gif(workdir):
    from PIL import Image

    from ganflow.images import animate

    paths = []
    for i in range(101):  # 101 grids, as a 100-epoch run draws: a white bar i pixels wide
        picture = np.zeros((100, 120), np.uint8)
        picture[:, :i] = 255
        Image.fromarray(picture).save(path := workdir / f"epoch_{i:04d}.png")
        paths.append(path)
    gif = Image.open(animate(paths, workdir / "samples.gif", width=60, frames=20))
    assert (gif.n_frames, gif.size, gif.info["loop"]) == (20, (60, 50), 0)
    widths = []
    for frame in range(gif.n_frames):
        gif.seek(frame)
        widths.append(int((np.asarray(gif.convert("L"))[25] > 128).sum()))
    assert widths[0] == 0 and widths[-1] == 50  # the first grid and the last are kept
    assert widths == sorted(widths)  # in order
