"""The logged generator as MLflow serves it: its input example, and `mlflow models serve`."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import TINY, free_port


@pytest.mark.slow
def test_mlflow_models_serve_answers_the_input_example_with_images(cli, workdir):
    assert cli("run", *TINY, "--seed", "3").exit_code == 0
    uri = f"sqlite:///{workdir}/mlflow.db"
    model = "models:/dcgan-generator@champion"
    mlflow.set_tracking_uri(uri)
    folder = Path(mlflow.artifacts.download_artifacts(model, dst_path=str(workdir / "model")))
    body = (folder / "serving_input_example.json").read_text()
    z = np.asarray(json.loads(body)["inputs"], np.float32)
    assert z.shape == (2, 64) and z.std() > 0.5  # two noise vectors, not zeros
    expected = mlflow.pyfunc.load_model(model).predict(z)

    port = free_port()
    log = open(workdir / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
         "local", "--host", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    served = np.asarray(json.loads(answer.read())["predictions"])
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not answer:\n"
                                f"{(workdir / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
    assert served.shape == (2, 32, 32, 1)  # two 32x32 grey images
    assert -1.0 <= served.min() and served.max() <= 1.0
    np.testing.assert_allclose(served, expected, atol=1e-5)  # what the model itself makes
