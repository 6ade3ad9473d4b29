import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TINY, free_port, image_steps, write_plugin
from ganflow import journal
from ganflow.ui import server_env


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, with its own store and proxied artifacts, that a
    test can stop (as a crash would: SIGKILL to its process group) and start again on the
    same port and store."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc = None
        self.started = False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        """Start the server and wait until it answers; the first start moves to another port
        if the one chosen was taken meanwhile (by another xdist worker's server: then that
        one answered /health for ours); a restart keeps its port, where clients wait."""
        for _ in range(3):
            if self._launch():
                self.started = True
                return self
            if self.started:
                pytest.fail(f"mlflow server could not bind port {self.port} again:\n"
                            f"{(self.folder / 'server.log').read_text()[-3000:]}")
            self.port = free_port()
        pytest.fail("mlflow server found no free port in 3 tries")

    def _launch(self) -> bool:
        """Whether this server bound its port and answers (False: the port was taken)."""
        path = self.folder / "server.log"
        offset = path.stat().st_size if path.exists() else 0
        log = open(path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "server-artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env(),
        )
        log.close()
        deadline = time.monotonic() + 90
        while True:
            with open(path, errors="replace") as log:
                log.seek(offset)
                said = log.read()
            if "address already in use" in said:
                self.kill()
                return False
            # Only once its own log says it listens is the answer on the port its own.
            if "Uvicorn running on" in said:
                try:
                    with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                        if answer.status == 200:
                            return True
                except OSError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"mlflow server did not start:\n{said[-3000:]}")
            time.sleep(0.3)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(workdir):
    """A server of the test's own, for a test that stops and starts it."""
    running = MlflowServer(workdir).start()
    yield running
    running.kill()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for this module's tests that only need a server (starting one takes 6-17 s
    here); each of them logs to its own experiment and registers its own model names, so they
    stay independent of each other and of the order they run in."""
    running = MlflowServer(tmp_path_factory.mktemp("shared-mlflow-server")).start()
    yield running
    running.kill()


@pytest.mark.slow
def test_run_and_sample_through_a_tracking_server(cli, workdir, shared_server):
    uri = shared_server.uri
    # No evaluation: this test is about logging, registering and sampling through a server
    # (the four runs below have the server pick a champion by their FIDs).
    result = cli("run", *TINY, "--eval-every", "0", "--tracking-uri", uri, "--experiment",
                 "through-a-server")
    assert result.exit_code == 0, result.output
    assert f"browse:  {uri}/#/experiments/" in result.stdout
    assert "?workflowType=machine_learning" in result.stdout
    assert not (workdir / "mlflow.db").exists()  # everything went to the server

    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("dcgan-generator", "latest")
    assert client.get_experiment(client.get_run(version.run_id).info.experiment_id).name == \
        "through-a-server"  # this test's run, not another's on the shared server
    assert image_steps(client, version.run_id) == [0, 3, 6]
    assert [gif for gif in (shared_server.folder / "server-artifacts").rglob("samples.gif")
            if version.run_id in gif.parts]  # stored by the server

    sampled = cli("sample", "models:/dcgan-generator@latest", "--tracking-uri", uri,
                  "-n", "4", "-o", "s.png")
    assert sampled.exit_code == 0, sampled.output
    assert (workdir / "s.png").stat().st_size > 0


@pytest.mark.slow
def test_mlflow_project_runs_ganflow_in_its_own_run(workdir, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(root / "mlflow"), "-P", "plugin=dcgan",
         "-P", "args=--epochs 1 --steps-per-epoch 2 --seed 4 --eval-every 0", "--env-manager",
         "local"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # ganflow continued the project's run instead of starting another
    params = runs[0].data.params
    assert (params["plugin"], params["recipe"], params["seed"], params["steps_per_epoch"]) == (
        "dcgan", "dcgan", "4", "2")
    assert runs[0].info.status == "FINISHED"


# A run that takes about 0.3 s a step (the test loss's pause), long enough for a server to be
# stopped and started again while it trains.
OUTAGE_RUN = ["--epochs", "5", "--steps-per-epoch", "10", "--batch-size", "8", "--log-every",
              "1", "--eval-every", "0", "--samples", "4", "--loss", "stepped", "-q"]


def start_ganflow(args, workdir, pause):
    env = {**os.environ, "GANFLOW_TEST_PAUSE": str(pause)}
    return subprocess.Popen(
        [sys.executable, "-m", "ganflow", *args], cwd=workdir,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_run(client, proc, at_step, timeout=300):
    """The id of the server's RUNNING run once it has logged d_loss at ``at_step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "attributes.status = 'RUNNING'")
        if runs and any(m.step >= at_step for m in
                        client.get_metric_history(runs[0].info.run_id, "d_loss")):
            return runs[0].info.run_id
        time.sleep(0.2)
    raise TimeoutError(f"no step {at_step} on the server")


def assert_every_step_once(client, run_id, steps, epochs, per_epoch):
    windows = [m.step for m in client.get_metric_history(run_id, "d_loss")]
    assert sorted(windows) == list(range(1, steps + 1))  # each step's window, none twice
    assert sorted(m.step for m in client.get_metric_history(run_id, "epoch/mean_d_loss")) == \
        [per_epoch * e for e in range(1, epochs + 1)]
    assert image_steps(client, run_id) == [per_epoch * e for e in range(epochs + 1)]


@pytest.mark.slow
def test_a_server_that_stops_mid_run_and_comes_back_loses_nothing(server, workdir, tmp_path):
    from test_checkpoints import STEPPED

    plugin = write_plugin(tmp_path / "stepped.py", STEPPED)
    client = MlflowClient(server.uri)
    proc = start_ganflow(["run", *OUTAGE_RUN, "--plugin-module", plugin,
                          "--tracking-uri", server.uri], workdir, pause=0.3)
    run_id = running_run(client, proc, at_step=4)
    server.kill()
    down_at = time.time()
    time.sleep(4)
    server.start()
    up_at = time.time()
    out, err = proc.communicate(timeout=600)

    assert proc.returncode == 0, err
    assert "Tracking store unreachable" in err and "Tracking store back after" in err
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_every_step_once(client, run_id, steps=50, epochs=5, per_epoch=10)
    # Training went on while the server was away: steps were taken (and stamped) meanwhile.
    during = [m.step for m in client.get_metric_history(run_id, "d_loss")
              if down_at * 1000 < m.timestamp < up_at * 1000]
    assert len(during) >= 5, during
    assert client.get_model_version_by_alias("dcgan-generator", "latest").run_id == run_id


@pytest.mark.slow
def test_a_server_that_stays_away_stops_the_run_to_resume_later(server, workdir, tmp_path):
    from test_checkpoints import STEPPED

    plugin = write_plugin(tmp_path / "stepped.py", STEPPED)
    client = MlflowClient(server.uri)
    proc = start_ganflow(["run", *OUTAGE_RUN, "--plugin-module", plugin,
                          "--tracking-uri", server.uri, "--tracking-timeout", "3",
                          "--checkpoint-every", "5", "--checkpoint-to-mlflow"], workdir,
                         pause=0.3)
    run_id = running_run(client, proc, at_step=4)
    server.kill()
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 75, err
    assert "urllib3" not in err  # one line about the outage, not one per retried request
    error = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in err, err
    assert f"ganflow resume {run_id} --tracking-uri {server.uri}" in error[0]
    checkpoints = workdir / "ganflow-runs" / run_id / "checkpoints"
    stopped_at = json.loads((checkpoints / "progress.json").read_text())["steps_done"]
    assert 4 < stopped_at < 50
    assert "logging calls kept in" in error[0] and "journal.jsonl" in error[0]
    assert journal.waiting(workdir / "ganflow-runs" / run_id)

    server.start()
    resumed = start_ganflow(["resume", run_id, "--tracking-uri", server.uri, "-q"], workdir,
                            pause=0)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert not (workdir / "ganflow-runs" / run_id / "journal.jsonl").exists()  # all delivered
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ganflow.resumed_from_step"] == str(stopped_at)
    assert_every_step_once(client, run_id, steps=50, epochs=5, per_epoch=10)
    assert client.get_model_version_by_alias("dcgan-generator", "latest").run_id == run_id
    # The checkpoints reached the server too (those made while it was away included), and it
    # keeps the newest 3.
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/ckpt-40", "checkpoints/ckpt-45", "checkpoints/ckpt-50"]


@pytest.mark.slow
def test_a_run_killed_while_the_server_is_away_loses_nothing_it_logged(server, workdir,
                                                                      tmp_path):
    # The server goes away at step 4; training goes on, every window only in the outbox and
    # its journal; then the process is SIGKILLed (the OOM killer, a pre-empted machine).
    from test_checkpoints import STEPPED

    plugin = write_plugin(tmp_path / "stepped.py", STEPPED)
    client = MlflowClient(server.uri)
    proc = start_ganflow(["run", *OUTAGE_RUN, "--plugin-module", plugin,
                          "--tracking-uri", server.uri, "--checkpoint-every", "5"], workdir,
                         pause=0.3)
    run_id = running_run(client, proc, at_step=4)
    server.kill()
    folder = workdir / "ganflow-runs" / run_id
    deadline = time.monotonic() + 300
    progress = folder / "checkpoints" / "progress.json"  # written with the first checkpoint
    while not progress.exists() or json.loads(progress.read_text())["steps_done"] < 25:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    saved = json.loads((folder / "checkpoints" / "progress.json").read_text())["steps_done"]
    assert journal.waiting(folder)

    server.start()
    assert max(m.step for m in client.get_metric_history(run_id, "d_loss")) < 25
    resumed = start_ganflow(["resume", run_id, "--tracking-uri", server.uri, "-q"], workdir,
                            pause=0)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"Journal of run {run_id}: " in err and "logging calls delivered" in err
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ganflow.resumed_from_step"] == str(saved)
    # Every window, epoch mean and grid once: those the killed process made up to its
    # checkpoint from its journal, the rest from the resumed training.
    assert_every_step_once(client, run_id, steps=50, epochs=5, per_epoch=10)
    assert not (folder / "journal.jsonl").exists()
    assert client.get_model_version_by_alias("dcgan-generator", "latest").run_id == run_id


def four_runs_at_once(workdir, uri):
    """Four `ganflow run`s started together on one store and one registered model name."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "ganflow", "run", "--plugin", "toy", "--epochs", "1",
         "--steps-per-epoch", "5", "--eval-every", "1", "--eval-samples", "500", "--seed",
         str(seed), "--registered-model", "shared", "--experiment", "four-at-once",
         "--output-dir", f"out-{seed}", "-q"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in range(4)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    client = MlflowClient(uri)
    versions = client.search_model_versions("name='shared'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    assert len({v.run_id for v in versions}) == 4
    best = min(versions, key=lambda v: (float(v.tags["eval.fid"]), int(v.version)))
    assert client.get_model_version_by_alias("shared", "champion").version == best.version


@pytest.mark.slow
def test_four_runs_at_once_against_one_server_register_four_versions(shared_server, workdir):
    four_runs_at_once(workdir, shared_server.uri)


@pytest.mark.slow
def test_four_runs_at_once_on_a_new_sqlite_store_register_four_versions(workdir):
    four_runs_at_once(workdir, f"sqlite:///{workdir}/new.db")
