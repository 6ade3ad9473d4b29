"""The generator as an MLflow model: logged with the Keras flavor and a (latent -> sample)
signature, loaded back as a pyfunc sampler from any models:/ or runs:/ URI."""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from ganflow import noise
from ganflow.errors import UsageError

GENERATOR_ARTIFACT = "generator"
# Explicit: inferring requirements re-imports the model and costs seconds.
PIP_REQUIREMENTS = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]


def log_generator(generator, latent_dim: int) -> str:
    """Log the generator (Keras flavor, latent -> sample signature); returns its model URI."""
    z = np.zeros((2, latent_dim), dtype=np.float32)
    signature = infer_signature(z, keras.ops.convert_to_numpy(generator(z, training=False)))
    info = mlflow.keras.log_model(
        generator,
        name=GENERATOR_ARTIFACT,
        signature=signature,
        pip_requirements=PIP_REQUIREMENTS,
    )
    return info.model_uri


def load_sampler(model_uri: str):
    """A logged generator as (pyfunc model, latent_dim), for any models:/ or runs:/ URI."""
    from ganflow.mixture import sampler_layer

    sampler_layer()  # registers the layer of maximum-likelihood mixture samplers with Keras
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load {model_uri}: {first_line}") from None
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.is_tensor_spec() or len(schema.inputs[0].shape) != 2:
        raise UsageError(f"{model_uri} has no (batch, latent_dim) input signature: "
                         "it was not logged by ganflow")
    return model, int(schema.inputs[0].shape[1])


def sample_shape(model) -> tuple[int, ...]:
    """One sample's shape, from a loaded generator's output signature."""
    return tuple(int(d) for d in model.metadata.get_output_schema().inputs[0].shape[1:])


def sample(model_uri: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, z): ``count`` samples from the generator at ``model_uri``, noise from ``seed``."""
    model, latent_dim = load_sampler(model_uri)
    z = noise.latent(count, latent_dim, seed, "sample")
    return predict_quietly(model, z), z


def predict_quietly(model, z: np.ndarray) -> np.ndarray:
    """A loaded pyfunc generator's samples for ``z``, without Keras's progress bar on stdout
    (the Keras flavor's pyfunc calls model.predict)."""
    was_on = keras.utils.is_interactive_logging_enabled()
    keras.utils.disable_interactive_logging()
    try:
        return np.asarray(model.predict(z))
    finally:
        if was_on:
            keras.utils.enable_interactive_logging()


def training_run(model_uri: str) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) of the run that logged the model at ``model_uri`` (empty if none)."""
    try:
        run_id = mlflow.models.get_model_info(model_uri).run_id
        if not run_id:
            return {}, {}
        run = mlflow.get_run(run_id)
        return dict(run.data.params), dict(run.data.tags)
    except (mlflow.exceptions.MlflowException, OSError):
        return {}, {}
