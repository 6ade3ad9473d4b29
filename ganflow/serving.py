"""A registered generator as MLflow loads it for ``mlflow.pyfunc.load_model`` and ``mlflow
models serve``: ganflow's own pyfunc loader over the Keras flavor's files.

The model is still a Keras model in Keras's ``.keras`` format, loaded with Keras's safe mode
(``mlflow.keras.load_model`` loads it as well); only the ``python_function`` flavor names this
module as its loader, instead of ``mlflow.keras``, whose wrapper calls ``model.predict`` with
Keras's default verbosity and so prints a progress bar on stdout at every call. Here a call
prints nothing. MLflow checks an input's names, shapes and dtypes against the signature
before ``predict``; what the signature cannot say (finite noise, a class the generator knows,
one per noise vector) is checked here, so a wrong input is an MLflow error rather than a
TensorFlow traceback. Nothing is pickled: the code is
this installed module.
"""

from __future__ import annotations

import os

import numpy as np

CHUNK = 1000  # samples per forward pass


class Generator:
    """What ``mlflow.pyfunc.load_model`` returns inside its PyFuncModel for a ganflow
    generator: ``predict(z)``, or ``predict({"z": z, "label": labels})`` for a conditional
    one; a generator with a mean latent (StyleGAN2's) also takes
    ``params={"truncation": psi}``, the truncation trick (declared in its signature, so MLflow
    passes it)."""

    def __init__(self, model, num_classes: int | None = None):
        self.model = model
        self.num_classes = int(num_classes) if num_classes else None

    def get_raw_model(self):
        return self.model

    def predict(self, data, params=None):
        inputs = self._inputs(data)
        psi = (params or {}).get("truncation")
        if psi is None:
            return self._generate(inputs)
        from ganflow.style import truncation

        psi = float(psi)
        if not np.isfinite(psi):
            _refuse(f"truncation must be a finite number, got {psi}")
        with truncation(self.model, psi):
            return self._generate(inputs)

    def _generate(self, inputs):
        z = inputs["z"] if self.num_classes else inputs
        out = [np.asarray(self.model(self._take(inputs, i), training=False))
               for i in range(0, len(z), CHUNK)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def _take(self, inputs, start):
        if self.num_classes:
            return {k: v[start:start + CHUNK] for k, v in inputs.items()}
        return inputs[start:start + CHUNK]

    def _inputs(self, data):
        """What the signature lets through (MLflow checks names, shapes and dtypes first),
        checked for what it cannot say: finite noise, one known class per noise vector."""
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            data = {c: np.stack(data[c].to_numpy()) for c in data.columns} \
                if self.num_classes else data.to_numpy()
        if not self.num_classes:
            return self._latent(data)
        return {"z": self._latent(data["z"]), "label": self._labels(data["label"],
                                                                    len(data["z"]))}

    @staticmethod
    def _latent(z):
        z = np.asarray(z, np.float32)
        if not np.isfinite(z).all():
            _refuse("z must be finite numbers")
        return z

    def _labels(self, labels, count: int):
        labels = np.asarray(labels)
        if labels.shape != (count,):
            _refuse(f"label must be {count} classes, one per noise vector, got shape "
                    f"{labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            _refuse(f"label must be a class in 0..{self.num_classes - 1}, got "
                    f"{int(labels.min() if labels.min() < 0 else labels.max())}")
        return labels.astype(np.int32)


def _refuse(message: str):
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    raise MlflowException(message, INVALID_PARAMETER_VALUE)


def _load_pyfunc(path):
    """What MLflow calls to load the model at ``path`` (the model's folder) as a pyfunc."""
    from mlflow.keras.load import _load_keras_model
    from mlflow.models import Model

    import ganflow.layers  # noqa: F401  registers the architectures' own layers with Keras
    from ganflow.mixture import sampler_layer

    sampler_layer()  # registers the layer of maximum-likelihood mixture samplers with Keras
    conf = Model.load(os.path.join(path, "MLmodel"))
    metadata = conf.metadata or {}
    return Generator(_load_keras_model(path, conf),
                     metadata.get("ganflow_num_classes"))
