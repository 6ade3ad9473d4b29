"""The Model Registry: a run's generator logged, registered, tagged and described, and the
champion alias moved only for versions whose quality was measured."""

import mlflow
import numpy as np
from mlflow import MlflowClient

from ganflow import registry


def generator():
    import keras

    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def test_a_generator_is_registered_tagged_and_described(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("registry")
    measured = {"eval.features": "raw", "eval.dataset": "ring8", "eval.samples": "100"}
    with mlflow.start_run() as run:
        made = registry.register_generator(
            generator(), 3, (2,), run_id=run.info.run_id, name="g", recipe="toy",
            made_by={"recipe": "toy", "loss": "minimax", "ema": None},
            trained="2 epochs, 10 training steps", metrics={"eval/fid": 1.5, "d_loss": 0.7},
            step=10, measured_with=measured)
    assert (made.model_uri, made.name, made.version) == ("models:/g/1", "g", 1)
    assert made.champion.is_new and made.champion.fid == 1.5
    client = MlflowClient()
    version = client.get_model_version("g", "1")
    assert version.tags == {"train.recipe": "toy", "train.loss": "minimax", "eval.fid": "1.5",
                            **measured}
    assert version.description.startswith(f"Made by run {run.info.run_id} (recipe toy, loss "
                                          "minimax; 2 epochs, 10 training steps). fid 1.5 (raw")
    assert "noise in, points of shape (2,) out" in client.get_registered_model("g").description
    z = np.zeros((4, 3), np.float32)
    assert mlflow.pyfunc.load_model("models:/g@champion").predict(z).shape == (4, 2)


def test_unmeasured_or_unnamed_generators_are_not_champions(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("registry")
    with mlflow.start_run() as run:
        common = dict(run_id=run.info.run_id, recipe="toy", made_by={"recipe": "toy"},
                      trained="fitted at once", metrics={})
        logged = registry.register_generator(generator(), 3, (2,), name=None, **common)
        plain = registry.register_generator(generator(), 3, (2,), name="h", **common)
    assert logged.model_uri.startswith("models:/m-") and logged.version is None
    assert plain.version == 1 and plain.champion is None
    assert "champion" not in MlflowClient().get_registered_model("h").aliases
