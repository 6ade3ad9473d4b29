"""The generator as an MLflow model: logged with the Keras flavor and a (latent -> sample)
signature, or ({z, label} -> sample) for a conditional one, and loaded back as a ``Sampler``
from any models:/ or runs:/ URI."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from ganflow import noise
from ganflow.data import memory_bytes
from ganflow.errors import UsageError, first_line
from ganflow.style import mean_latents

GENERATOR_ARTIFACT = "generator"
TRUNCATION = "truncation"  # the inference parameter of generators with a mean latent
# Explicit: inferring requirements re-imports the model and costs seconds.
PIP_REQUIREMENTS = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]


def log_generator(generator, latent_dim: int, num_classes: int | None = None,
                  step: int = 0) -> str:
    """Log the generator (Keras flavor, with its signature); returns its model URI.

    ``step`` is the training step its weights are from: MLflow links the run's metrics logged
    at that step to the model (its page shows them), so it must be the last step, not 0.

    A conditional generator (``num_classes``) is logged with named inputs ``z`` and ``label``,
    so ``pyfunc`` callers pass ``{"z": ..., "label": ...}``; its class count is in the model's
    metadata.
    """
    # The input example (shown in the UI, and the body `mlflow models serve` is tried with):
    # two noise vectors, and in a conditional generator two classes.
    z = noise.latent(2, latent_dim, 0, "example")
    metadata = {"ganflow_latent_dim": latent_dim}
    model, example = generator, z
    if num_classes:
        z_in = keras.Input((latent_dim,), name="z")
        label_in = keras.Input((), dtype="int32", name="label")
        model = keras.Model({"z": z_in, "label": label_in}, generator([z_in, label_in]),
                            name="conditional_generator")
        example = {"z": z, "label": np.arange(2, dtype=np.int32) % num_classes}
        metadata["ganflow_num_classes"] = int(num_classes)
    out = keras.ops.convert_to_numpy(model(example, training=False))
    # A generator with a mean latent (StyleGAN2's) takes the truncation trick's psi as an
    # inference parameter: predict(z, params={"truncation": 0.7}); the input stays z.
    params = {TRUNCATION: 1.0} if mean_latents(generator) else None
    with quiet_keras():  # MLflow tries the example with model.predict: no progress bar
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=GENERATOR_ARTIFACT,
            flavor=_KerasFlavor,
            flavor_name="mlflow.keras",
            model=model,
            signature=infer_signature(example, out, params=params),
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            metadata=metadata,
            step=step,
        )
    return info.model_uri


LOADER = "ganflow.serving"  # the python_function loader of ganflow's generators
LOADERS = ("mlflow.keras", LOADER)  # what check_safe loads (mlflow.keras: logged before it)


class _KerasFlavor:
    """``mlflow.keras`` for ``Model.log``, making the model's folder before saving into it,
    with ``ganflow.serving`` as its pyfunc loader (a quiet, checked ``predict``).

    MLflow 3.17's ``mlflow.keras.save_model`` writes the input example before it creates the
    folder, so ``mlflow.keras.log_model(input_example=...)`` fails with FileNotFoundError
    (mlflow/mlflow#16183, open). The model is still the Keras flavor, which
    ``mlflow.keras.load_model`` loads (``log_generator`` passes ``flavor_name="mlflow.keras"``)."""

    @staticmethod
    def save_model(path, mlflow_model, **kwargs):
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        mlflow_model.flavors["python_function"]["loader_module"] = LOADER
        mlflow_model.save(os.path.join(path, "MLmodel"))


def describe_model(name: str, recipe: str, shape, latent_dim: int,
                   num_classes: int | None, truncates: bool = False) -> str:
    """A registered generator's description (Markdown): what it makes, what it takes, and
    how to sample it, on the command line and in Python."""
    shape = tuple(int(d) for d in shape)
    kind = "images" if len(shape) == 3 else "points"
    inputs = f"`z`, float32 (batch, {latent_dim}), standard normal noise"
    if num_classes:
        inputs = (f"`{{\"z\": ..., \"label\": ...}}`: {inputs}, and `label`, int32 (batch,), "
                  f"a class in 0..{num_classes - 1}")
        call = ('g.predict({"z": z, "label": np.arange(16, dtype="int32") % '
                f'{num_classes}}})')
    else:
        call = "g.predict(z)"
    return (
        f"A GAN generator trained by ganflow (recipe `{recipe}`): noise in, {kind} of shape "
        f"{shape} out, values in [-1, 1] (pixels: (x + 1) * 127.5).\n\n"
        f"Input: {inputs}.\n\n"
        f"Sample it:\n\n    ganflow sample models:/{name}@champion -n 64 -o samples.png\n\n"
        f"In Python:\n\n    import mlflow, numpy as np\n"
        f"    g = mlflow.pyfunc.load_model(\"models:/{name}@champion\")\n"
        f"    z = np.random.default_rng(0).standard_normal((16, {latent_dim})).astype(\"float32\")\n"
        f"    x = {call}\n\n"
        + (f"It has a mean latent: `--truncation 0.7` (in Python, `params={{\"truncation\": "
           f"0.7}}`) pulls w towards it, trading variety for typical samples.\n\n"
           if truncates else "")
        + "`@champion` is the version with the best FID; `@latest` the newest.")


@dataclass
class Sampler:
    """A logged generator, loaded: ``sampler(z)`` or ``sampler(z, labels)`` gives samples."""

    model: Any  # the pyfunc model
    latent_dim: int
    num_classes: int | None = None  # a conditional generator's classes, else None
    truncation: float | None = None  # psi of the truncation trick (None: the model's own)

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape, from the output signature."""
        return tuple(int(d) for d in self.model.metadata.get_output_schema().inputs[0].shape[1:])

    @property
    def truncates(self) -> bool:
        """Whether the generator takes the truncation trick's psi (has a mean latent)."""
        schema = self.model.metadata.get_params_schema()
        return schema is not None and TRUNCATION in {p.name for p in schema.params}

    def __call__(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        params = None if self.truncation is None else {TRUNCATION: float(self.truncation)}
        if self.num_classes:
            if labels is None:
                raise UsageError("this generator is conditional: it needs a label per sample")
            return predict_quietly(self.model, {"z": z, "label": np.asarray(labels, np.int32)},
                                   params)
        return predict_quietly(self.model, z, params)


def load_sampler(model_uri: str) -> Sampler:
    """A logged generator, from any models:/ or runs:/ URI."""
    from ganflow.mixture import sampler_layer

    sampler_layer()  # registers the layer of maximum-likelihood mixture samplers with Keras
    try:
        check_safe(model_uri, mlflow.models.get_model_info(model_uri).flavors)
        model = mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise UsageError(f"cannot load {model_uri}: {first_line(exc)}") from None
    except ValueError as exc:
        if "safe_mode" not in str(exc):
            raise
        raise UsageError(f"cannot load {model_uri}: it holds Python code (e.g. a Lambda layer's "
                         "function), which Keras's safe mode refuses to run and ganflow does "
                         "not load; load it yourself with safe_mode=False only if you trust "
                         "who made it") from None
    except TypeError as exc:  # Keras: "Could not locate class 'Name'. Make sure ..."
        found = re.search(r"Could not locate class '([^']+)'", str(exc))
        if not found:
            raise
        params, _ = training_run(model_uri)
        modules = params.get("plugin_modules")
        how = f"--plugin-module {modules.replace(';', ' --plugin-module ')}" if modules else \
            "--plugin-module PLUGIN (the plugin that defines it), or install its package"
        raise UsageError(f"cannot load {model_uri}: it uses the class {found.group(1)!r}, which "
                         f"no loaded plugin defines: pass {how}") from None
    schema = model.metadata.get_input_schema()
    inputs = {} if schema is None or not schema.is_tensor_spec() else \
        {spec.name: spec for spec in schema.inputs}
    num_classes = (model.metadata.metadata or {}).get("ganflow_num_classes")
    z = inputs.get("z") if num_classes else (schema.inputs[0] if inputs else None)
    if z is None or len(z.shape) != 2:
        raise UsageError(f"{model_uri} has no (batch, latent_dim) input signature: "
                         "it was not logged by ganflow")
    return Sampler(model, int(z.shape[1]), num_classes)


def check_safe(model_uri: str, flavors: dict) -> None:
    """Refuse a model whose loading runs code Keras's safe mode does not check: only the
    Keras flavor in Keras's own format (what ``ganflow run`` logs) is loaded. An exported
    SavedModel runs its graph's ops (which may write files) as ``tf.saved_model.load`` reads
    it; a pickled Python model runs any code."""
    keras_flavor = flavors.get("keras")
    loader = flavors.get("python_function", {}).get("loader_module")
    if keras_flavor is not None and not keras_flavor.get("save_exported_model") and \
            loader in LOADERS:
        return
    what = ("an exported TensorFlow SavedModel" if keras_flavor or "tensorflow" in flavors
            else f"a {loader or ', '.join(flavors) or 'flavorless'} model")
    raise UsageError(f"will not load {model_uri}: it is {what}, and loading it would run code "
                     "that Keras's safe mode does not check; ganflow loads only generators in "
                     "Keras's .keras format, as ganflow run logs them")


def sample(model_uri: str, count: int, seed: int, label: int | None = None,
           truncation: float | None = None):
    """(samples, z, labels): ``count`` samples of the generator at ``model_uri``, noise from
    ``seed``. A conditional one makes ``label``, or every class in turn (``noise.class_rows``;
    labels is then the classes asked for, else None). ``truncation``: psi of the truncation
    trick, for a generator with a mean latent."""
    sampler = load_sampler(model_uri)
    if truncation is not None:
        if not sampler.truncates:
            raise UsageError(f"--truncation {truncation}: {model_uri} has no mean latent to "
                             "truncate towards (a stylegan2 generator has)")
        sampler.truncation = truncation
    need = 4 * count * (int(np.prod(sampler.shape)) + sampler.latent_dim)
    if need > memory_bytes() // 2:
        raise UsageError(f"{count:,} samples of shape {sampler.shape} need {need / 2**30:.1f} "
                         f"GiB, more than half this machine's memory "
                         f"({memory_bytes() / 2**30:.0f} GiB): ask for fewer (-n)")
    z = noise.latent(count, sampler.latent_dim, seed, "sample")
    labels = None
    if sampler.num_classes:
        if label is not None and not 0 <= label < sampler.num_classes:
            raise UsageError(f"--class {label}: this generator knows classes 0 to "
                             f"{sampler.num_classes - 1}")
        labels = (np.full(count, label, np.int32) if label is not None
                  else noise.class_rows(count, sampler.num_classes)[:count])
    elif label is not None:
        raise UsageError(f"--class {label}: {model_uri} is not a conditional generator")
    return sampler(z, labels), z, labels




def predict_quietly(model, inputs, params=None) -> np.ndarray:
    """A loaded pyfunc generator's samples for ``inputs``, without Keras's progress bar on
    stdout (the Keras flavor's pyfunc calls model.predict)."""
    with quiet_keras():
        return np.asarray(model.predict(inputs, params=params))


@contextmanager
def quiet_keras():
    """No Keras progress bars on stdout inside."""
    was_on = keras.utils.is_interactive_logging_enabled()
    keras.utils.disable_interactive_logging()
    try:
        yield
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
