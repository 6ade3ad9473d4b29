"""Everything MLflow: the run, params, metrics, sample grids, the generator and the registry.

No autolog and no mlflow.keras.MlflowCallback: with a GAN subclass they log the wrong
optimizer, fail the signature, step metrics at 0 and hash the whole tf.data dataset.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from ganflow import __version__
from ganflow.config import RunConfig
from ganflow.errors import UsageError
from ganflow.images import save_grid

GENERATOR_ARTIFACT = "generator"
# Explicit: inferring requirements re-imports the model and costs seconds.
PIP_REQUIREMENTS = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]


def use_tracking_uri(uri: str | None, must_exist: bool = False) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's default; returns the one in use.

    With ``must_exist``, a SQLite store that is not there is an error (reading from it would
    only create an empty one).
    """
    if uri:
        mlflow.set_tracking_uri(uri)
    uri = mlflow.get_tracking_uri()
    if must_exist and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UsageError(
            f"no MLflow store at {uri}: run this where you trained, or pass --tracking-uri"
        )
    return uri


@contextmanager
def start_run(config: RunConfig, extra_params: dict, tags: dict, exclude=()):
    """One MLflow run, holding every resolved setting (but ``exclude``) as a param.

    Under ``mlflow run`` (MLFLOW_RUN_ID set) the project's run is continued instead.
    """
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(config.experiment)
    run_name = f"{config.recipe}-{config.dataset.replace(':', '-').replace('/', '-')}"
    with mlflow.start_run(run_name=run_name) as run:
        params = {k: v for k, v in config.params().items() if k not in exclude}
        mlflow.log_params({**params, **extra_params})
        mlflow.set_tags({"ganflow.version": __version__, **tags})
        yield run


TOY_EVAL_SAMPLES = 10_000


class SampleView:
    """How a run shows its generator: a PNG per epoch and, for toy data, exact metrics.

    Images become a grid of the fixed noise batch. Points become a scatter (2-D) or density
    (1-D) plot against real data; when the data's density is known, ``TOY_EVAL_SAMPLES``
    samples from fixed noise are scored with ``ganflow.toy.toy_metrics`` as ``toy/...``.
    """

    def __init__(self, source, noise: np.ndarray, seed: int):
        self.source = source
        self.noise = noise
        self.density = getattr(source, "density", None)
        self.is_image = source.spec.is_image
        self.eval_noise = None
        self.real = None
        if not self.is_image:
            rng = np.random.default_rng(seed + 1)
            count = TOY_EVAL_SAMPLES if self.density is not None else len(noise)
            self.eval_noise = rng.standard_normal((count, noise.shape[1])).astype(np.float32)
            if self.density is None:
                self.real = np.stack([x for x in source.examples().take(len(noise)).as_numpy_iterator()])

    def __call__(self, generator, path: Path, title: str) -> tuple[Path, dict[str, float]]:
        def generate(z):
            return keras.ops.convert_to_numpy(generator(z, training=False))

        if self.is_image:
            return save_grid(generate(self.noise), path), {}
        from ganflow import toy

        points = generate(self.eval_noise)
        metrics = {}
        if self.density is not None:
            metrics = toy.toy_metrics(points, self.density)
            title = f"{title}: {toy.format_metrics(metrics)}"
        shown = points[: len(self.noise)]
        path = toy.plot_points(shown, path, title, real=self.real, density=self.density)
        return path, {f"toy/{k}": float(v) for k, v in metrics.items()}


def log_report(experiment: str, run_name: str, params: dict, metrics: dict, files) -> str:
    """One finished MLflow run holding a report: params, metrics and files; returns its id."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"ganflow.version": __version__})
        for path in files:
            mlflow.log_artifact(str(path))
    return run.info.run_id


class MlflowLogger(keras.callbacks.Callback):
    """Logs metric windows, epoch means and a sample picture each epoch to the active run.

    Steps are generator updates. Keras hands callbacks running epoch means; the mean over the
    last window is recovered from two of them exactly: (sum_now - sum_then) / steps_between.
    ``view`` (a ``SampleView``) draws the picture from the model's sampling generator (the EMA
    copy when there is one) and may return metrics, logged at the same step.
    """

    def __init__(self, log_every: int, steps_per_epoch: int, samples_dir: Path, view):
        super().__init__()
        self.log_every = log_every
        self.steps_per_epoch = steps_per_epoch
        self.samples_dir = Path(samples_dir)
        self.view = view
        self.last_grid: Path | None = None
        self.last_view_metrics: dict[str, float] = {}
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._write_grid(0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._mark = (0, {})  # (batches seen, running sums) at the last window

    def on_train_batch_end(self, batch, logs=None):
        seen = batch + 1
        if seen % self.log_every and seen != self.steps_per_epoch:
            return
        sums = {k: float(v) * seen for k, v in (logs or {}).items()}
        then, old = self._mark
        window = {k: (s - old.get(k, 0.0)) / (seen - then) for k, s in sums.items()}
        mlflow.log_metrics(window, step=self._step(seen))
        self._mark = (seen, sums)

    def on_epoch_end(self, epoch, logs=None):
        step = self._step(self.steps_per_epoch)
        mlflow.log_metrics({f"epoch/{k}": float(v) for k, v in (logs or {}).items()}, step=step)
        self._write_grid(epoch + 1)

    def _step(self, seen: int) -> int:
        return self._epoch * self.steps_per_epoch + seen

    def _write_grid(self, epoch: int) -> None:
        path = self.samples_dir / f"epoch_{epoch:04d}.png"
        self.last_grid, metrics = self.view(self.model.sampling_generator, path, f"epoch {epoch}")
        mlflow.log_artifact(str(self.last_grid), artifact_path="samples")
        if metrics:
            mlflow.log_metrics(metrics, step=epoch * self.steps_per_epoch)
            self.last_view_metrics = metrics


def log_generator(generator, latent_dim: int, model_name: str | None, tags: dict):
    """Log the generator (Keras flavor, latent -> image signature) and register it.

    Returns (model_uri, version); version is None when model_name is None. MLflow resolves
    ``models:/<name>@latest`` to the newest version by itself ("latest" is a reserved alias).
    """
    z = np.zeros((2, latent_dim), dtype=np.float32)
    signature = infer_signature(z, keras.ops.convert_to_numpy(generator(z, training=False)))
    info = mlflow.keras.log_model(
        generator,
        name=GENERATOR_ARTIFACT,
        signature=signature,
        pip_requirements=PIP_REQUIREMENTS,
    )
    if model_name is None:
        return info.model_uri, None
    version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    return f"models:/{model_name}/{version.version}", version.version


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


def sample(model_uri: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, z): ``count`` samples from the generator at ``model_uri``, noise from ``seed``."""
    model, latent_dim = load_sampler(model_uri)
    z = np.random.default_rng(seed).standard_normal((count, latent_dim)).astype(np.float32)
    # The Keras flavor's pyfunc calls model.predict, whose progress bar would land on stdout.
    was_on = keras.utils.is_interactive_logging_enabled()
    keras.utils.disable_interactive_logging()
    try:
        return np.asarray(model.predict(z)), z
    finally:
        if was_on:
            keras.utils.enable_interactive_logging()
