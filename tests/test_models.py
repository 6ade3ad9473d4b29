"""The logged generator as MLflow serves it: its input example, and `mlflow models serve`."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import TINY, free_port


def test_a_logged_generator_predicts_quietly_and_refuses_wrong_inputs_in_one_line(
        workdir, capfd):
    import keras
    from mlflow.exceptions import MlflowException

    from ganflow import models

    z_in, label_in = keras.Input((4,)), keras.Input((), dtype="int32")
    embedded = keras.layers.Embedding(3, 4)(label_in)
    generator = keras.Model([z_in, label_in], keras.layers.Dense(2, activation="tanh")(
        keras.layers.Concatenate()([z_in, embedded])))
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("served")
    with mlflow.start_run():
        uri = models.log_generator(generator, 4, num_classes=3)
    loaded = mlflow.pyfunc.load_model(uri)
    capfd.readouterr()
    out = loaded.predict({"z": np.zeros((5, 4), np.float32), "label": np.arange(5, dtype=np.int32) % 3})
    assert out.shape == (5, 2)
    assert capfd.readouterr().out == ""  # no progress bar: a script's stdout stays its own
    with pytest.raises(MlflowException) as err:
        loaded.predict({"z": np.zeros((2, 4), np.float32), "label": np.array([1, 7], np.int32)})
    assert str(err.value) == "label must be a class in 0..2, got 7"
    # The signature's shape and dtype are MLflow's to check, before predict: its error ends
    # in what was wrong.
    with pytest.raises(MlflowException) as err:
        loaded.predict({"z": np.zeros((2, 3), np.float32), "label": np.array([0, 1], np.int32)})
    assert str(err.value).endswith("Shape of input (2, 3) does not match expected shape (-1, 4).")
    with pytest.raises(MlflowException) as err:
        loaded.predict({"z": np.full((1, 4), "a"), "label": np.array([0], np.int32)})
    assert str(err.value).endswith("dtype of input <U1 does not match expected dtype float32")
    with pytest.raises(MlflowException) as err:
        loaded.predict(np.zeros((1, 4), np.float32))
    assert str(err.value).endswith("Model is missing inputs ['z', 'label'].")
    with pytest.raises(MlflowException, match=r"^label must be 2 classes, one per noise vector, "
                                              r"got shape \(3,\)$"):
        loaded.predict({"z": np.zeros((2, 4), np.float32), "label": np.arange(3, dtype=np.int32)})
    with pytest.raises(MlflowException, match=r"^z must be finite numbers$"):
        loaded.predict({"z": np.full((1, 4), np.nan, np.float32), "label": np.array([0], np.int32)})
    assert mlflow.models.get_model_info(uri).flavors["python_function"]["loader_module"] == \
        "ganflow.serving"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["dcgan", "cdcgan"])
def test_mlflow_models_serve_answers_the_input_example_with_images(cli, workdir, recipe):
    assert cli("run", "--plugin", recipe, *TINY, "--seed", "3").exit_code == 0
    uri = f"sqlite:///{workdir}/mlflow.db"
    model = f"models:/{recipe}-generator@champion"
    mlflow.set_tracking_uri(uri)
    folder = Path(mlflow.artifacts.download_artifacts(model, dst_path=str(workdir / "model")))
    body = (folder / "serving_input_example.json").read_text()
    example = json.loads(body)["inputs"]
    inputs = {"z": np.asarray(example["z"], np.float32),
              "label": np.asarray(example["label"], np.int32)} if recipe == "cdcgan" else \
        np.asarray(example, np.float32)
    z = inputs["z"] if recipe == "cdcgan" else inputs
    assert z.shape == (2, 64) and z.std() > 0.5  # two noise vectors, not zeros
    expected = mlflow.pyfunc.load_model(model).predict(inputs)

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
        if recipe == "cdcgan":  # a class the generator does not know: a one-line refusal
            wrong = json.dumps({"inputs": {**example, "label": [3, 10]}}).encode()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", data=wrong,
                    headers={"Content-Type": "application/json"}), timeout=30)
            assert refused.value.code == 400
            # MLflow's server puts the data it was given before ganflow's one line.
            message = json.loads(refused.value.read())["message"]
            assert message.endswith("\nError: label must be a class in 0..9, got 10")
            assert "Traceback" not in message
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
    assert served.shape == (2, 32, 32, 1)  # two 32x32 grey images
    assert -1.0 <= served.min() and served.max() <= 1.0
    np.testing.assert_allclose(served, expected, atol=1e-5)  # what the model itself makes


CUSTOM_LAYER = '''
import keras

import ganflow


@keras.saving.register_keras_serializable(package="tinyarch")
class Brighten(keras.layers.Layer):
    def call(self, x):
        return x * 0.5 + 0.25


class Tiny:
    def build_generator(self, spec, latent_dim):
        return keras.Sequential([keras.Input((latent_dim,)),
                                 keras.layers.Dense(32 * 32, activation="tanh"),
                                 keras.layers.Reshape((32, 32, 1)), Brighten()])

    def build_discriminator(self, spec):
        return keras.Sequential([keras.Input(spec.shape), keras.layers.Flatten(),
                                 keras.layers.Dense(1)])


@ganflow.hookimpl
def ganflow_register_architectures(register):
    register("tiny-custom", Tiny(), "a generator with a layer of its own")
'''


@pytest.mark.slow
def test_sampling_a_model_whose_plugin_is_not_loaded_names_the_class_and_the_plugin(cli,
                                                                                    workdir):
    plugin = workdir / "tinyarch.py"
    plugin.write_text(CUSTOM_LAYER)
    assert cli("run", "--plugin-module", plugin, "--arch", "tiny-custom", *TINY,
               "--eval-every", "0").exit_code == 0

    def sample(*extra):  # a new process: the plugin's layer is not registered there
        return subprocess.run([sys.executable, "-m", "ganflow", "sample",
                               "models:/dcgan-generator@latest", "-n", "4", *extra],
                              cwd=workdir, capture_output=True, text=True, timeout=300)

    refused = sample()
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: cannot load models:/dcgan-generator@latest: it uses the class "
        f"'Brighten', which no loaded plugin defines: pass --plugin-module {plugin}")
    done = sample("--plugin-module", str(plugin))
    assert done.returncode == 0, done.stderr
    assert (workdir / "samples.png").exists()
