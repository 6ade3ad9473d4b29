"""The outbox: what a run logs, sent without making training wait, kept while the store is
away."""

import time

import mlflow
from mlflow import MlflowClient

from ganflow import journal
from ganflow.journal import Journal
from ganflow.outbox import Outbox


def test_outbox_keeps_what_an_unreachable_store_missed_in_its_journal(workdir, monkeypatch):
    import socket

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = []
    box = Outbox("r1", MlflowClient(f"http://127.0.0.1:{port}"), warn=lines.append,
                 retry_every=0.05, journal=Journal(workdir / "r1", "r1", "http://nowhere"))
    box.log_metrics({"d_loss": 0.5, "g_loss": 2.0}, step=1)
    box.log_metrics({"d_loss": 0.25}, step=2)
    box.set_tags({"note": "kept"})
    deadline = time.monotonic() + 30
    while box.down_for() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.down_for() > 0 and not box.flush(timeout=0.0) and box.waiting == 3
    assert len(lines) == 1 and lines[0].startswith("Tracking store unreachable (connection ")
    assert len(box.close()) == 3 and journal.waiting(workdir / "r1")  # kept on disk

    mlflow.set_experiment("outbox")
    with mlflow.start_run() as run:
        pass
    replayed = journal.replay(workdir / "r1", run.info.run_id, MlflowClient())
    assert (replayed.sent, replayed.already, replayed.dropped) == (3, 0, 0)
    assert not (workdir / "r1" / "journal.jsonl").exists()
    client = MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "d_loss")] == \
        [(1, 0.5), (2, 0.25)]
    assert client.get_run(run.info.run_id).data.tags["note"] == "kept"


def test_a_journal_whose_calls_were_all_delivered_goes_with_the_outbox(workdir):
    mlflow.set_experiment("outbox")
    with mlflow.start_run() as run:
        box = Outbox(run.info.run_id, journal=Journal(workdir / "r", run.info.run_id, "u"))
        box.log_metrics({"x": 1.0}, step=1)
        assert box.flush(timeout=30)
        assert (workdir / "r" / "journal.delivered").read_text() == "1"
        assert not journal.waiting(workdir / "r")
        assert box.close() == []
    assert not (workdir / "r" / "journal.jsonl").exists()


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
