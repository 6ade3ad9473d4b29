"""One RunConfig per ``ganflow run``: recipe defaults < config file < CLI flags, validated once."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ganflow.errors import UsageError

# --jit values and what keras.Model.compile(jit_compile=...) takes for each.
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}
JIT_CHOICES = tuple(JIT_COMPILE)


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. Each field is a ``ganflow run`` flag (underscores as dashes)
    and an MLflow param of the run."""

    recipe: str = "dcgan"
    arch: str = "dcgan"
    loss: str = "non-saturating"
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    epochs: int = 1
    batch_size: int = 64
    d_steps: int = 1
    latent_dim: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    ema: float | None = None
    steps_per_epoch: int | None = None
    jit: str = "auto"
    log_every: int = 10
    eval_every: int | None = None
    eval_samples: int = 10_000
    features: str | None = None
    feature_weights: str | None = None
    samples: int = 64
    output_dir: str = "ganflow-runs"
    tracking_uri: str | None = None
    experiment: str = "ganflow"
    register: bool = True
    registered_model: str | None = None
    plugin_modules: tuple[str, ...] = ()

    @property
    def jit_compile(self) -> bool | str:
        """``--jit`` as keras.Model.compile takes it."""
        return JIT_COMPILE[self.jit]

    @property
    def model_name(self) -> str:
        """The registered model's name: ``<recipe>-generator`` unless set."""
        return self.registered_model or f"{self.recipe}-generator"

    def params(self) -> dict[str, str]:
        """Every setting as an MLflow param (None as empty)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            out[f.name] = "" if value is None else str(value)
        return out


FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}

# (field, lowest allowed value) for numbers that must be positive or non-negative.
_MINIMUMS = {
    "epochs": 1,
    "batch_size": 1,
    "d_steps": 1,
    "latent_dim": 1,
    "steps_per_epoch": 1,
    "log_every": 1,
    "eval_every": 0,
    "eval_samples": 10,
    "samples": 1,
    "image_size": 4,
    "seed": 0,
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML file of settings by field name (dashes or underscores)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file")
    text = p.read_text()
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
    return {k.replace("-", "_"): v for k, v in data.items()}


def resolve(*layers: tuple[str, dict[str, Any]]) -> RunConfig:
    """Merge (source, values) layers, later winning; check names, types and ranges."""
    merged: dict[str, Any] = {}
    for source, values in layers:
        for key, value in values.items():
            if key not in FIELD_TYPES:
                close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(f"{source}: unknown setting {key!r}{hint}")
            if value is not None:
                merged[key] = _coerce(key, value, source)
    config = RunConfig(**merged)
    _check(config)
    return config


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = FIELD_TYPES[key].split(" ")[0]  # "int", "float", "bool", "str", "tuple[str,"
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
        if kind.startswith("tuple"):
            return (value,) if isinstance(value, str) else tuple(value)
        return str(value)
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{source}: {key} must be {kind.rstrip('[,')}, got {value!r}") from None


def _check(config: RunConfig) -> None:
    for key, lowest in _MINIMUMS.items():
        value = getattr(config, key)
        if value is not None and value < lowest:
            raise UsageError(f"{flag(key)} must be at least {lowest}, got {value}")
    for key in ("lr_g", "lr_d"):
        if not getattr(config, key) > 0:
            raise UsageError(f"{flag(key)} must be positive, got {getattr(config, key)}")
    if config.ema is not None and not 0 < config.ema < 1:
        raise UsageError(f"--ema must be in (0, 1), e.g. 0.999, got {config.ema}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(config, key) < 1:
            raise UsageError(f"{flag(key)} must be in [0, 1), got {getattr(config, key)}")
    if config.jit not in JIT_CHOICES:
        raise UsageError(f"--jit must be one of {', '.join(JIT_CHOICES)}, got {config.jit!r}")

