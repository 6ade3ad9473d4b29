"""ganflow.tracking: where runs go, one MLflow run per `ganflow run`, and the runs a dead
process left RUNNING."""

import json
import os
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow import MlflowClient

from ganflow import tracking
from ganflow.config import recipe_layer, resolve, user_layers
from ganflow.errors import TrackingServerError, UsageError
from ganflow.outbox import TrackingUnavailable

from conftest import free_port


def test_the_store_is_checked_before_anything_waits_on_it(workdir):
    with pytest.raises(UsageError, match=r"^tracking URI ftp://x: MLflow cannot store runs at "
                                         r"a ftp:// URI; use a path, sqlite:///FILE"):
        tracking.check_store("ftp://x")
    with pytest.raises(TrackingUnavailable,
                       match=rf"^tracking server http://127.0.0.1:{(port := free_port())}"
                             r" does not answer: start it"):
        tracking.check_store(f"http://127.0.0.1:{port}")
    (workdir / "taken").write_text("a file where a folder should be")
    with pytest.raises(UsageError, match=r"taken is a file, not a folder"):
        tracking.check_store(f"sqlite:///{workdir}/taken/mlflow.db")
    with pytest.raises(UsageError, match=r"^no MLflow store at sqlite:///.*missing.db: run this "
                                         r"where you trained, or pass --tracking-uri$"):
        tracking.use_tracking_uri(f"sqlite:///{workdir}/missing.db", must_exist=True)
    assert not (workdir / "missing.db").exists()  # reading did not create an empty one


def test_a_run_holds_its_settings_their_layers_and_its_process(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    config = resolve(recipe_layer("toy", {"epochs": 4, "loss": "minimax"}),
                     *user_layers(None, {"epochs": 2, "seed": 3}))
    with tracking.start_run(config, {"data_size": 10}, {"ganflow.plugin.loss": "mine"},
                            exclude=("loss",)) as run:
        pass
    logged = MlflowClient().get_run(run.info.run_id)
    params, tags = logged.data.params, logged.data.tags
    assert params["epochs"] == "2" and params["seed"] == "3" and params["data_size"] == "10"
    assert "loss" not in params  # excluded
    assert json.loads(tags["ganflow.config"])["loss"] == "minimax"
    origins = json.loads(tags[tracking.ORIGINS_TAG])
    assert (origins["epochs"], origins["loss"], origins["seed"]) == \
        ("flags", "recipe toy", "flags")
    assert "batch_size" not in origins  # its default
    assert tags["ganflow.pid"] == str(os.getpid()) and tags["ganflow.plugin.loss"] == "mine"
    assert logged.info.run_name == "toy-digits" and logged.info.status == "FINISHED"

    # Reopened (ganflow resume): the same run, its params as they were, its tags this process's.
    changed = resolve(recipe_layer("toy", {"epochs": 4}), ("ganflow resume", {"epochs": 6}))
    with tracking.start_run(changed, {"data_size": 99}, {}, resume_run_id=run.info.run_id):
        pass
    again = MlflowClient().get_run(run.info.run_id)
    assert again.data.params["epochs"] == "2" and again.data.params["data_size"] == "10"
    assert json.loads(again.data.tags["ganflow.config"])["epochs"] == 6
    assert json.loads(again.data.tags[tracking.ORIGINS_TAG])["epochs"] == "ganflow resume"


def test_runs_left_running_by_a_dead_process_are_marked_killed(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("abandoned")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name("abandoned").experiment_id
    gone = client.create_run(experiment, tags={**tracking.process_tags(), "ganflow.pid": dead})
    alive = client.create_run(experiment, tags=tracking.process_tags())  # this process
    other = client.create_run(experiment)  # not ganflow's
    assert tracking.mark_abandoned_runs() == [gone.info.run_id]
    assert client.get_run(gone.info.run_id).info.status == "KILLED"
    assert client.get_run(gone.info.run_id).data.tags["ganflow.abandoned"] == \
        f"process {dead} ended without closing the run"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(other.info.run_id).info.status == "RUNNING"


def test_the_last_logged_step_is_where_a_resumed_run_logs_from(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("steps")
    with mlflow.start_run() as run:
        assert tracking.last_logged_step(run.info.run_id) == -1
        for step in (8, 16, 12):
            mlflow.log_metric("d_loss", 1.0, step=step)
    assert tracking.last_logged_step(run.info.run_id) == 16


def test_a_password_in_the_tracking_uri_is_never_printed_or_stored(cli, workdir, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")  # so that the test's own setting of them is undone
        monkeypatch.delenv(name)
    config = resolve(("flags", {"tracking_uri": "http://ann:s3cr%40t@127.0.0.1:9/"}))
    assert config.tracking_uri == "http://127.0.0.1:9/"
    assert "s3cr" not in config.to_json() and "s3cr" not in json.dumps(config.params())
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == \
        ("ann", "s3cr@t")  # where MLflow reads them from
    result = cli("run", "--tracking-uri", f"http://bob:hunter2@127.0.0.1:{free_port()}", "-q")
    assert result.exit_code == 75 and "hunter2" not in result.output
    assert "does not answer" in result.stderr


@pytest.fixture
def servers():
    """On 127.0.0.1: a web server that is not MLflow, and one that accepts connections and
    never answers; their ports."""
    import http.server
    import socket
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    yield web.server_address[1], silent.getsockname()[1]
    web.shutdown()
    silent.close()


def test_tracking_uris_that_cannot_work_are_one_line_each(workdir, servers, monkeypatch):
    web, silent = servers
    cases = [
        ("http://localhost:notaport", UsageError,
         "tracking URI http://localhost:notaport: the port 'notaport' is not a number, e.g. "
         "http://127.0.0.1:5000"),
        (f"https://127.0.0.1:{web}", TrackingServerError,
         f"tracking URI https://127.0.0.1:{web}: the server at 127.0.0.1:{web} does not speak "
         f"HTTPS (wrong version number): use http://127.0.0.1:{web}"),
        (f"http://127.0.0.1:{web}", TrackingServerError,
         f"tracking URI http://127.0.0.1:{web}: the server there is not an MLflow tracking "
         "server (/health answered 404, its REST API 404): check the port, or start one: "
         "mlflow server --host 127.0.0.1 --port PORT"),
        ("sqlite://relative.db", UsageError,
         "tracking URI sqlite://relative.db: a SQLite URI has three slashes before a relative "
         "path and four before an absolute one, e.g. sqlite:///relative.db"),
        ("postgresql://ann:s3cret@localhost/runs", UsageError,
         "tracking URI postgresql://ann:***@localhost/runs: its database driver is not "
         "installed (no module psycopg): pip install 'psycopg[binary]'"),
        (f"file://{workdir}/mlruns", UsageError,
         f"tracking URI file://{workdir}/mlruns: MLflow 3.17 keeps no new runs in a folder (its "
         "file store is retired): use sqlite:///mlflow.db (mlflow migrate-filestore moves old "
         "runs there), or set MLFLOW_ALLOW_FILE_STORE=true"),
        (f"sqlite:///{workdir}", UsageError,
         f"tracking URI sqlite:///{workdir}: {workdir} cannot be used as a store (it is a "
         "folder): point --tracking-uri at another file"),
    ]
    for uri, error, message in cases:
        with pytest.raises(error) as raised:
            tracking.check_store(uri)
        assert str(raised.value) == message
    # A server that takes the connection and never answers: said within seconds, given up on.
    monkeypatch.setattr(tracking, "START_TIMEOUT", 3.0)
    said = []
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=rf"^tracking server http://127.0.0.1:{silent} "
                                                  r"accepts connections but did not answer in 3 s"):
        tracking.check_store(f"http://127.0.0.1:{silent}", say=said.append)
    assert said == [f"Waiting for the tracking server at http://127.0.0.1:{silent}: it accepts "
                    "connections but has not answered yet (giving up after 3 s)"]
    assert time.monotonic() - started < 15


def test_a_wrong_tracking_server_ends_a_run_in_one_line_with_its_own_exit_code(cli, workdir,
                                                                            servers):
    web, _ = servers
    result = cli("run", "--tracking-uri", f"http://127.0.0.1:{web}", "-q")
    assert result.exit_code == 69
    assert result.stderr.startswith(f"Error: tracking URI http://127.0.0.1:{web}: the server "
                                    "there is not an MLflow tracking server")
    assert not (workdir / "ganflow-runs").exists()


def test_a_run_records_what_it_trained_on_as_an_mlflow_dataset(cli, workdir):
    from conftest import TINY

    result = cli("run", *TINY, "--eval-every", "0", "--no-register", "--data-fraction", "0.5")
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["ganflow"], output_format="list")
    (record,) = run.inputs.dataset_inputs
    assert record.dataset.name == "digits"
    assert {t.key: t.value for t in record.tags} == {
        "mlflow.data.context": "training", "fraction": "0.5", "examples": "898"}
    schema = json.loads(record.dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["tensor-spec"]["shape"]) for c in schema] == [
        ("example", [-1, 32, 32, 1]), ("label", [-1])]


def test_recording_the_dataset_tries_again_when_a_run_started_together_won_the_insert(
        plugins, workdir, monkeypatch):
    # Four runs started together on one server: one's insert of the shared dataset broke the
    # store's uniqueness (a 400) and ended the run. Recording it again links it.
    import ganflow
    from ganflow.resolve import configure
    from ganflow.tracking import log_dataset

    config = configure(plugins, "toy", {})
    source = plugins.datasets.get("grid25").obj(ganflow.DatasetOptions())
    real_log_input, calls = mlflow.log_input, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("UNIQUE constraint failed: datasets")
        return real_log_input(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing)
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/m.db")
    with mlflow.start_run() as run:
        log_dataset(config, source)
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(calls) == 2 and [i.dataset.name for i in inputs] == [config.dataset]
