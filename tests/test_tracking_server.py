import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TINY


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(workdir):
    """A real `mlflow server` on 127.0.0.1, with its own store and proxied artifacts."""
    port = free_port()
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{workdir}/server.db",
         "--artifacts-destination", str(workdir / "server-artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start:\n{(workdir / 'server.log').read_text()}")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_run_and_sample_through_a_tracking_server(cli, workdir, mlflow_server):
    result = cli("run", *TINY, "--tracking-uri", mlflow_server)
    assert result.exit_code == 0, result.output
    assert f"browse:  open {mlflow_server}" in result.stdout
    assert not (workdir / "mlflow.db").exists()  # everything went to the server

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("dcgan-generator", "latest")
    grids = client.list_artifacts(version.run_id, "samples")
    assert len(grids) == 3
    assert list((workdir / "server-artifacts").rglob("epoch_0002.png"))  # stored by the server

    sampled = cli("sample", "models:/dcgan-generator@latest", "--tracking-uri", mlflow_server,
                  "-n", "4", "-o", "s.png")
    assert sampled.exit_code == 0, sampled.output
    assert (workdir / "s.png").stat().st_size > 0


@pytest.mark.slow
def test_mlflow_project_runs_ganflow_in_its_own_run(workdir, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(root / "mlflow"), "-P", "plugin=dcgan",
         "-P", "args=--epochs 1 --steps-per-epoch 2 --seed 4", "--env-manager", "local"],
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
