"""Everything MLflow: the run, params, metrics, sample grids, the generator and the registry.

No autolog and no mlflow.keras.MlflowCallback: with a GAN subclass they log the wrong
optimizer, fail the signature, step metrics at 0 and hash the whole tf.data dataset.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
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
        from ganflow.evaluation import generate

        if self.is_image:
            return save_grid(generate(generator, self.noise), path), {}
        from ganflow import toy

        points = generate(generator, self.eval_noise)
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


class EvaluationLogger(keras.callbacks.Callback):
    """Logs sample-quality metrics (``ganflow.evaluation``) before training, every ``every``
    epochs and after the last, at the step of that epoch's last generator update.

    Samples come from fixed noise. Metrics of the sampling generator are ``eval/NAME``; with
    an EMA copy, G's own weights are scored too, as ``eval_no_ema/NAME``. ``report``, when
    given, receives a line per evaluation (the CLI prints it).
    """

    def __init__(self, evaluator, every: int, steps_per_epoch: int, noise: np.ndarray,
                 report=None):
        super().__init__()
        self.evaluator = evaluator
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.noise = noise
        self.report = report
        self.last: dict[str, float] = {}
        self._pending: str | None = None

    def on_train_begin(self, logs=None):
        self._evaluate(0)
        self._flush()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every == 0 or done == self.params.get("epochs"):
            self._evaluate(done)

    # Keras's progress bar finishes an epoch's line after this callback's on_epoch_end: the
    # line is printed once the bar has moved on.
    def on_epoch_begin(self, epoch, logs=None):
        self._flush()

    def on_train_end(self, logs=None):
        self._flush()

    def _flush(self) -> None:
        if self._pending and self.report:
            self.report(self._pending)
        self._pending = None

    def _evaluate(self, epoch: int) -> None:
        from ganflow.evaluation import generate

        values = self.evaluator(generate(self.model.sampling_generator, self.noise))
        logged = {f"eval/{k}": v for k, v in values.items()}
        if self.model.ema_generator is not None:
            if epoch > 0:  # before training the average is G itself
                values = self.evaluator(generate(self.model.generator, self.noise))
            logged.update({f"eval_no_ema/{k}": v for k, v in values.items()})
        mlflow.log_metrics(logged, step=epoch * self.steps_per_epoch)
        self.last = logged
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in logged.items()
                          if k.startswith("eval/") and k != "eval/kid_std")
        self._pending = f"evaluation after epoch {epoch}: {shown}"


def version_tags(metrics: dict[str, float], evaluator_params: dict | None) -> dict[str, str]:
    """A model version's tags from its run's final metrics: ``eval/fid`` as ``fid``,
    ``eval_no_ema/fid`` as ``fid_no_ema``, the rest by their names; plus what the evaluation
    was measured with (``eval_features``, ``eval_dataset``, ``eval_samples``)."""
    tags = {}
    for key, value in metrics.items():
        if key.startswith("eval/"):
            key = key[len("eval/"):]
        elif key.startswith("eval_no_ema/"):
            key = key[len("eval_no_ema/"):] + "_no_ema"
        tags[key] = f"{value:.6g}"
    tags.update({k: str(v) for k, v in (evaluator_params or {}).items()})
    return tags


CHAMPION = "champion"
# Two FIDs compare only when measured with the same features, data and sample count.
COMPARABLE_BY = ("eval_features", "eval_dataset", "eval_samples")


@dataclass
class Champion:
    """Where the alias ``champion`` points after a promotion attempt."""

    version: int
    fid: float
    is_new: bool  # the version just registered became the champion
    comparable: bool = True  # False: the champion's FID was measured another way and stays


def promote_champion(model_name: str, version: int, attempts: int = 20) -> Champion:
    """Point the alias ``champion`` at the version with the lowest ``fid`` tag comparable with
    ``version``'s.

    MLflow has no compare-and-set for aliases, so this reads every version's tags, sets the
    alias, and reads again until the alias and the best agree: a run finishing at the same
    time that set a worse version after this one's read is corrected by this one's next read
    (or this one's mistake by its). A current champion measured some other way (other
    features, data or sample count) is not comparable and stays.
    """
    client = mlflow.MlflowClient()
    mine = client.get_model_version(model_name, str(version))
    if "fid" not in mine.tags:
        raise ValueError(f"version {version} of {model_name} has no fid tag")
    group = tuple(mine.tags.get(k) for k in COMPARABLE_BY)
    for _ in range(attempts):
        versions = client.search_model_versions(f"name='{model_name}'")
        scored = [v for v in versions if "fid" in v.tags
                  and tuple(v.tags.get(k) for k in COMPARABLE_BY) == group]
        best = min(scored, key=lambda v: (float(v.tags["fid"]), int(v.version)))
        try:
            current = client.get_model_version_by_alias(model_name, CHAMPION)
        except mlflow.exceptions.MlflowException:
            current = None
        if current is not None and "fid" in current.tags and \
                tuple(current.tags.get(k) for k in COMPARABLE_BY) != group:
            return Champion(int(current.version), float(current.tags["fid"]), False, False)
        if current is not None and current.version == best.version:
            return Champion(int(best.version), float(best.tags["fid"]),
                            int(best.version) == int(version))
        try:
            client.set_registered_model_alias(model_name, CHAMPION, best.version)
        except mlflow.exceptions.MlflowException:
            # Two first-time writers of the alias collide in the store (a unique constraint):
            # the other one's alias is there now, and the next read checks it.
            time.sleep(random.uniform(0.01, 0.1))
    raise mlflow.exceptions.MlflowException(
        f"the {CHAMPION} alias of {model_name} kept changing under {attempts} attempts")


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


def sample_shape(model) -> tuple[int, ...]:
    """One sample's shape, from a loaded generator's output signature."""
    return tuple(int(d) for d in model.metadata.get_output_schema().inputs[0].shape[1:])


def sample(model_uri: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, z): ``count`` samples from the generator at ``model_uri``, noise from ``seed``."""
    model, latent_dim = load_sampler(model_uri)
    z = np.random.default_rng(seed).standard_normal((count, latent_dim)).astype(np.float32)
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


def training_params(model_uri: str) -> dict[str, str]:
    """The params of the run that logged the model at ``model_uri`` ({} if it has none)."""
    try:
        run_id = mlflow.models.get_model_info(model_uri).run_id
        return dict(mlflow.get_run(run_id).data.params) if run_id else {}
    except (mlflow.exceptions.MlflowException, OSError):
        return {}
