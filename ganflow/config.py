"""One RunConfig per ``ganflow run``: recipe defaults < config file < CLI flags, validated once.

Each setting's help lives beside it (``setting(default, help)``): ``ganflow run --help``,
``ganflow settings`` and the recipe checks all read it from here. A resolved config knows
which layer set each setting (``RunConfig.set_by``), so nothing downstream reads a file
again to find out.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ganflow.errors import UsageError

# --jit values and what keras.Model.compile(jit_compile=...) takes for each.
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}
# Settings that take one of a few words, and those words.
CHOICES = {
    "jit": tuple(JIT_COMPILE),
    "strategy": ("default", "mirrored", "multiworker"),
    "precision": ("float32", "mixed_bfloat16", "mixed_float16", "auto"),
    "cache": ("auto", "memory", "none"),
}


def setting(default, help: str, metavar: str | None = None, flag: bool = True):
    """A RunConfig field with its help (and the metavar ``ganflow run --help`` shows).
    ``flag=False``: no ``ganflow run`` option of its own (set elsewhere on the command line)."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "flag": flag})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. Each field is a ``ganflow run`` flag (underscores as dashes; a
    list field's flag is singular and repeatable) and an MLflow param of the run."""

    recipe: str = setting("dcgan", "the recipe whose defaults the run starts from", "NAME",
                          flag=False)
    trainer: str = setting("gan", "trainer: gan (k D updates, then one G update), mle "
                           "(maximum likelihood), or a plugin's", "NAME[:SETTINGS]")
    arch: str = setting("dcgan", "architecture plugin (see `ganflow plugins`)", "NAME[:ARG]")
    loss: str = setting("non-saturating", "loss: minimax, non-saturating or a plugin's, with "
                        "its settings as NAME:key=value,...", "NAME[:SETTINGS]")
    regularizers: tuple[str, ...] = setting((), "add a regularizer to its network's loss: r1, "
                                            "r2 or a plugin's, e.g. r1:gamma=10,every=16 "
                                            "(repeatable; none: no regularizer)", "NAME[:SETTINGS]")
    augment: tuple[str, ...] = setting((), "augment every input of D while training, real and "
                                       "fake: color, translation, cutout (DiffAugment) or a "
                                       "plugin's (repeatable, applied in order; none: "
                                       "no augmentation)",
                                       "NAME[:SETTINGS]")
    conditional: bool = setting(False, "condition G and D on the class label, G(z, y) and "
                                "D(x, y) (needs labelled data)")
    dataset: str = setting("digits", "dataset: digits, tfds:NAME, folder:PATH, or a plugin's",
                           "NAME[:ARG]")
    data_dir: str | None = setting(None, "where tfds data is prepared (tfds's own default if "
                                   "unset)", "DIR")
    image_size: int | None = setting(None, "resize images to N x N pixels", "N")
    cache: str = setting("auto", "keep the examples in memory after the first pass: auto "
                         "(when they fit in a quarter of this machine's memory, as float32), "
                         "memory, or none (read every pass from the dataset: a prepared one "
                         "streams from its shards)")
    shuffle_buffer_mb: int = setting(256, "the shuffle buffer's bound, in MB of examples as "
                                     "float32 (the whole dataset when it is smaller)", "MB")
    data_fraction: float | None = setting(None, "train on this share of the dataset: a fixed "
                                          "subset of round(F x size) examples, the same in "
                                          "every run (evaluations still compare with the whole "
                                          "dataset)", "F")
    epochs: int = setting(1, "passes over the data")
    batch_size: int = setting(64, "m: examples per discriminator update and noise samples per "
                              "update")
    d_steps: int = setting(1, "k: discriminator updates per generator update")
    latent_dim: int = setting(64, "size of the noise vector z")
    optimizer: str = setting("adam", "optimizer of both networks: adam, adamw, rmsprop, sgd or "
                             "a plugin's, e.g. adam:beta1=0.0,beta2=0.9", "NAME[:SETTINGS]")
    g_optimizer: str | None = setting(None, "the generator's optimizer, if not --optimizer",
                                      "NAME[:SETTINGS]")
    d_optimizer: str | None = setting(None, "the discriminator's optimizer, if not "
                                      "--optimizer", "NAME[:SETTINGS]")
    lr_g: float = setting(2e-4, "generator learning rate")
    lr_d: float = setting(2e-4, "discriminator learning rate")
    lr_schedule: str = setting("constant", "learning-rate schedule of both optimizers over "
                               "the run: constant, linear, cosine", "NAME[:SETTINGS]")
    seed: int = setting(0, "seed for weights, noise and shuffling: the same seed reproduces a "
                        "run")
    ema: float | None = setting(None, "also keep an exponential moving average of G's weights "
                                "with this decay (e.g. 0.999) and sample, evaluate and "
                                "register it", "DECAY")
    steps_per_epoch: int | None = setting(None, "generator updates per epoch (default: one "
                                          "pass over the data)")
    jit: str = setting("auto", "XLA compilation: auto lets Keras decide (on for a GPU)")
    strategy: str = setting("default", "tf.distribute strategy: default (one device) or "
                            "mirrored (every GPU of this machine, or the --cpu-devices) or "
                            "multiworker (every worker TF_CONFIG names, each with its GPUs)")
    worker_timeout: float = setting(120.0, "under --strategy multiworker, how long a worker "
                                    "waits at start-up for the others TF_CONFIG names to join "
                                    "(it says which, every 10 s)", "SECONDS")
    cpu_devices: int | None = setting(None, "split the CPU into N logical devices, each a "
                                      "replica of --strategy mirrored: distribution tried "
                                      "without GPUs", "N")
    precision: str = setting("float32", "the networks' dtype policy: float32, mixed_bfloat16, "
                             "mixed_float16 (loss-scaled), or auto (bfloat16 where the "
                             "hardware has it, else float32); logits and losses stay float32")
    deterministic: bool = setting(False, "deterministic ops (tf.config.experimental."
                                  "enable_op_determinism): a resumed run then ends with the "
                                  "same weights as an uninterrupted one; slower")
    checkpoint_every: int | None = setting(None, "save a checkpoint every N training steps "
                                           "(default: every epoch); 0: only at the end or "
                                           "when stopped", "N")
    keep_checkpoints: int = setting(3, "how many of the newest checkpoints to keep", "K")
    checkpoint_to_mlflow: bool = setting(False, "also log each checkpoint to the MLflow run "
                                         "(the newest K are kept there), so that ganflow "
                                         "resume works from the tracking server alone, on "
                                         "another machine")
    log_every: int = setting(10, "log metrics to MLflow every N generator updates")
    steps_per_execution: int | None = setting(
        None, "training steps per call into TensorFlow, the host waiting on the device once "
        "per call (default: as many as fit between the metric windows, the checkpoints and "
        "the epoch's end, but 1 under --strategy mirrored or multiworker; 1: every step)", "N")
    eval_every: int | None = setting(None, "every N epochs (and before the first and after "
                                     "the last), log FID, KID, precision/recall and class "
                                     "coverage; 0: never", "N")
    eval_samples: int = setting(10_000, "generated samples (and real examples, up to the "
                                "data's size) per evaluation", "N")
    features: str | None = setting(None, "feature extractor for evaluation: classifier, "
                                   "inception, raw or a plugin's (default: classifier on "
                                   "labelled images, inception on other images)", "NAME")
    feature_weights: str | None = setting(None, "weights file for the feature extractor "
                                          "(inception: Keras's InceptionV3 notop .h5)", "PATH")
    samples: int = setting(64, "images in each epoch's sample grid")
    output_dir: str = setting("ganflow-runs", "where sample grids are written locally", "DIR")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (else MLFLOW_TRACKING_URI, "
                                       "else sqlite:///mlflow.db); a user:password@ in it goes "
                                       "to MLFLOW_TRACKING_USERNAME/PASSWORD, never to the run",
                                       "URI")
    tracking_timeout: float = setting(600.0, "how long the tracking server may stay "
                                      "unreachable (training goes on meanwhile) before the "
                                      "run stops with a checkpoint, to resume later",
                                      "SECONDS")
    experiment: str = setting("ganflow", "MLflow experiment name", "NAME")
    register: bool = setting(True, "register the generator in the MLflow Model Registry")
    registered_model: str | None = setting(None, "registered model name (default: "
                                           "<recipe>-generator)", "NAME")
    plugin_modules: tuple[str, ...] = setting((), "also load plugins from this .py file or "
                                              "module (repeatable)", "PATH_OR_MODULE",
                                              flag=False)
    disable_plugins: tuple[str, ...] = setting(
        (), "do not load this plugin: a provider as `ganflow plugins` shows it, a built-in "
        "module (ganflow_plugins.losses) or an installed package's entry point (repeatable; "
        f"{'GANFLOW_DISABLE_PLUGIN_AUTOLOAD'}=1 skips every installed package's)", "NAME",
        flag=False)
    # Which layer set each setting ("recipe dcgan", "--config FILE", "flags", ...); a setting
    # absent here has its default. Not a setting itself: not a param, not in to_json.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False,
                                       metadata={"setting": False})

    def set_by(self, key: str) -> str | None:
        """The layer that set ``key`` (``recipe dcgan``, ``--config FILE``, ``flags``), or
        None when it has its default."""
        return self.origins.get(key)

    def from_recipe(self, key: str) -> bool:
        """Whether ``key`` has the recipe's value (not a config file's or a flag's)."""
        return (self.set_by(key) or "").startswith(RECIPE)

    @property
    def jit_compile(self) -> bool | str:
        """``--jit`` as keras.Model.compile takes it."""
        return JIT_COMPILE[self.jit]

    @property
    def model_name(self) -> str:
        """The registered model's name: ``<recipe>-generator`` unless set."""
        return self.registered_model or f"{self.recipe}-generator"

    def to_json(self) -> str:
        """Every setting, as JSON: what ``ganflow resume`` rebuilds the run from."""
        return json.dumps({name: getattr(self, name) for name in FIELDS})

    def params(self) -> dict[str, str]:
        """Every setting that is set, as an MLflow param (lists joined with ';'); an unset one
        (None, an empty list) is absent rather than an empty string."""
        out = {}
        for name in FIELDS:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = ";".join(value)
            if value is not None and value != "":
                out[name] = str(value)
        return out


# Every setting, by name (``origins`` is not one).
FIELDS = {f.name: f for f in fields(RunConfig) if f.metadata.get("setting", True)}
FIELD_TYPES = {name: f.type for name, f in FIELDS.items()}

# Settings that became something else: a config file or recipe that still uses them is told
# what to write instead.
RENAMED = {
    "beta1": "Adam's betas are settings of the optimizer now: optimizer: adam:beta1=0.5",
    "beta2": "Adam's betas are settings of the optimizer now: optimizer: adam:beta2=0.9",
}

# (field, highest sensible value): far beyond any run this tool is for, and well before a
# number would only exhaust the memory with a traceback (a latent of 1e8 floats is a first
# layer of 1e8 x 512 weights).
_MAXIMUMS = {
    "latent_dim": 100_000,
    "image_size": 4096,
    "samples": 10_000,
    "eval_samples": 1_000_000,
    "batch_size": 1_000_000,
    "d_steps": 1000,
    "cpu_devices": 64,
    "seed": 2**32 - 1,  # what NumPy and TensorFlow take as a seed
}

# (field, lowest allowed value) for numbers that must be positive or non-negative.
_MINIMUMS = {
    "epochs": 1,
    "cpu_devices": 1,
    "batch_size": 1,
    "d_steps": 1,
    "latent_dim": 1,
    "steps_per_epoch": 1,
    "log_every": 1,
    "steps_per_execution": 1,
    "eval_every": 0,
    "eval_samples": 10,
    "samples": 1,
    "image_size": 4,
    "seed": 0,
    "checkpoint_every": 0,
    "keep_checkpoints": 1,
    "tracking_timeout": 1,
    "worker_timeout": 1,
    "shuffle_buffer_mb": 1,
}


def flag(name: str) -> str:
    """The ``ganflow run`` option of a setting: ``--batch-size``; ``--regularizer`` for the
    list ``regularizers``."""
    if FIELDS.get(name) is not None and kind_of(name) == "tuple":
        name = name.removesuffix("s")
    return "--" + name.replace("_", "-")


def kind_of(name: str) -> str:
    """``int``, ``float``, ``bool``, ``str`` or ``tuple``: a setting's type, without None."""
    kind = FIELD_TYPES[name].split(" ")[0]
    return "tuple" if kind.startswith("tuple") else kind


RECIPE = "recipe "  # how a recipe's layer is named: "recipe dcgan"
FLAGS = "flags"


def recipe_layer(name: str, defaults: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A recipe's defaults as a ``resolve`` layer: keys with dashes or underscores, and the
    recipe's own name."""
    return RECIPE + name, {**{str(k).replace("-", "_"): v for k, v in defaults.items()},
                           "recipe": name}


def user_layers(config_file: str | None, flags: dict[str, Any]) -> list[tuple[str, dict]]:
    """What the user gave, as ``resolve`` layers: the config file's settings (if any), then
    the flags (None: not given)."""
    layers = [(f"--config {config_file}", load_config_file(config_file))] if config_file else []
    return [*layers, (FLAGS, flags)]


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML file of settings by field name (dashes or underscores)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"--config {path}: cannot read it as text ({type(exc).__name__}): "
                         "give a JSON or YAML file") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise UsageError(f"--config {path}: cannot parse it: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(*layers: tuple[str, dict[str, Any]]) -> RunConfig:
    """Merge (source, values) layers, later winning; check names, types and ranges. The
    config remembers which layer set each setting (``RunConfig.set_by``)."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for source, values in layers:
        for key, value in values.items():
            if key in RENAMED:
                raise UsageError(f"{source}: {key} is no longer a setting: {RENAMED[key]}")
            if key not in FIELD_TYPES:
                close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(f"{source}: unknown setting {key!r}{hint}")
            if value is not None:
                merged[key] = _coerce(key, value, source)
                origins[key] = source
    if merged.get("tracking_uri"):
        from ganflow.net import credentials_to_environment

        merged["tracking_uri"] = credentials_to_environment(merged["tracking_uri"])
    config = RunConfig(**merged, origins=MappingProxyType(origins))
    _check(config)
    return config


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = kind_of(key)
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                return {"true": True, "false": False, "1": True, "0": False}[value.lower()]
            return bool(value)
        if kind == "tuple":
            if isinstance(value, str):
                value = (value,)
            if tuple(value) == ("none",):  # the way to clear a recipe's list from a flag
                return ()
            if not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
        if not isinstance(value, (str, int, float)):
            raise ValueError(value)
        return str(value)
    except (ValueError, KeyError, TypeError):
        expected = "a list of text" if kind == "tuple" else kind
        raise UsageError(f"{source}: {key} must be {expected}, got {value!r}") from None


def _check(config: RunConfig) -> None:
    for key in FIELDS:
        value = getattr(config, key)
        if kind_of(key) == "float" and value is not None and not math.isfinite(value):
            raise UsageError(f"{flag(key)} must be a finite number, got {value}")
    for key, lowest in _MINIMUMS.items():
        value = getattr(config, key)
        if value is not None and value < lowest:
            raise UsageError(f"{flag(key)} must be at least {lowest}, got {value}")
    for key, highest in _MAXIMUMS.items():
        value = getattr(config, key)
        if value is not None and value > highest:
            raise UsageError(f"{flag(key)} must be at most {highest:,}, got {value:,}")
    for key in ("lr_g", "lr_d"):
        value = getattr(config, key)
        if not 0 < value < float("inf"):
            raise UsageError(f"{flag(key)} must be a positive number, got {value}")
    if config.jit == "on" and config.deterministic:
        raise UsageError("--jit on and --deterministic do not go together: Keras compiles "
                         "without XLA under op determinism (not every XLA op is "
                         "deterministic); drop one of them")
    if config.data_fraction is not None and not 0 < config.data_fraction <= 1:
        raise UsageError(f"--data-fraction must be in (0, 1], e.g. 0.1, got "
                         f"{config.data_fraction}")
    if config.ema is not None and not 0 < config.ema < 1:
        raise UsageError(f"--ema must be in (0, 1), e.g. 0.999, got {config.ema}")
    if not config.experiment.strip():
        raise UsageError("--experiment must be a name, got an empty one")
    name = config.model_name
    if not name.strip() or any(c in name for c in "/:") or name.strip(".") == "":
        raise UsageError(f"--registered-model {name!r}: a model name must not be empty or "
                         "contain '/' or ':'")
    for key, choices in CHOICES.items():
        if getattr(config, key) not in choices:
            raise UsageError(f"{flag(key)} must be one of {', '.join(choices)}, got "
                             f"{getattr(config, key)!r}")
