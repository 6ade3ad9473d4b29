"""Plugin settings: ``--loss NAME:key=value,...`` and the declarations that check it.

A plugin declares the settings of what it registers as ``{"key": ganflow.Setting(default,
help)}``; the registered object is then a factory, called with every setting by keyword (the
user's value, else the default). Values are checked against their type, choices and minimum
before anything starts, and each becomes an MLflow param of the run.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from ganflow.errors import PluginError, UsageError

TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


@dataclass(frozen=True)
class Setting:
    """One setting of a plugin: its default, what it does, and what values it takes.

    ``type`` is inferred from the default (bool, int, float or str) unless given (needed when
    the default is None). ``choices`` restricts the values; ``minimum`` bounds numbers below,
    ``maximum`` above (``below=True``: the maximum itself excluded, as Adam's betas < 1).
    """

    default: Any
    help: str = ""
    type: type | None = None
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    below: bool = False

    @property
    def kind(self) -> type:
        kind = self.type or type(self.default)
        if kind not in TYPES:
            raise PluginError(f"a setting's type must be one of bool, int, float, str; got "
                              f"{kind.__name__}: pass Setting(..., type=float)")
        return kind

    def describe(self) -> str:
        """``gp=10.0 (float >= 0): gradient penalty weight``: one line for ``ganflow plugins``."""
        kind = TYPES[self.kind]
        if self.choices:
            kind = "|".join(map(str, self.choices))
        elif self.minimum is not None and self.maximum is not None:
            kind = f"{kind} in [{self.minimum:g}, {self.maximum:g}{')' if self.below else ']'}"
        elif self.minimum is not None:
            kind = f"{kind} >= {self.minimum:g}"
        text = f"{kind}, default {self.default}"
        return f"{text}: {self.help}" if self.help else text


class Bare(str):
    """A setting named without a value (``dcgan:sn``): ``true`` for a bool setting, a mistake
    for any other."""


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"wgan:gp=10,one_sided=true"`` -> ``("wgan", {"gp": "10", "one_sided": "true"})``;
    ``"dcgan:sn"`` -> ``("dcgan", {"sn": Bare("true")})``."""
    name, sep, rest = spec.partition(":")
    values: dict[str, str] = {}
    if sep:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip() if eq else Bare("true")
            if not key:
                raise UsageError(f"{spec!r}: write settings as {name}:key=value,key=value")
            if key in values:
                raise UsageError(f"{spec!r}: {key} is given twice")
            values[key] = value
    return name.strip(), values


def resolve(declared: dict[str, Setting], given: dict[str, Any], what: str) -> dict[str, Any]:
    """Every declared setting's value: ``given`` (text or typed) checked, else the default.

    ``what`` names the thing in errors: ``loss 'wgan'``.
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        if not declared:
            raise UsageError(f"{what} takes no settings, got {', '.join(unknown)}")
        close = difflib.get_close_matches(unknown[0], declared, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{what} has no setting {unknown[0]!r}{hint}; its settings: "
                         f"{', '.join(declared)}")
    return {key: (convert(setting, given[key], f"{what} setting {key}") if key in given
                  else setting.default)
            for key, setting in declared.items()}


def convert(setting: Setting, value: Any, what: str) -> Any:
    """``value`` (text from a flag, or a typed value from a config file) as the setting's type."""
    kind = setting.kind
    given = value
    if isinstance(value, Bare) and kind is not bool:
        raise UsageError(f"{what} needs a value: write it as key=value")
    try:
        if kind is bool:
            if isinstance(value, str):
                value = {"true": True, "false": False, "1": True, "0": False,
                         "yes": True, "no": False}[value.strip().lower()]
            elif not isinstance(value, bool):
                raise ValueError(value)
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(value)
        else:
            value = str(value)
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{what} must be a finite {TYPES[kind]}, got {given!r}") from None
    if setting.choices and value not in setting.choices:
        raise UsageError(f"{what} must be one of {', '.join(map(str, setting.choices))}, "
                         f"got {value!r}")
    if setting.minimum is not None and value < setting.minimum:
        raise UsageError(f"{what} must be at least {setting.minimum:g}, got {value!r}")
    if setting.maximum is not None and (value >= setting.maximum if setting.below
                                        else value > setting.maximum):
        bound = "below" if setting.below else "at most"
        raise UsageError(f"{what} must be {bound} {setting.maximum:g}, got {value!r}")
    return value


def check_declarations(settings: Any, plugin: str, what: str) -> dict[str, Setting]:
    """A plugin's ``settings=`` argument, checked when it registers: a dict of Settings whose
    defaults pass their own checks."""
    if settings is None:
        return {}
    if not isinstance(settings, dict) or not all(
            isinstance(k, str) and k.isidentifier() and isinstance(v, Setting)
            for k, v in settings.items()):
        raise PluginError(f"plugin {plugin}: {what}'s settings must be a dict of identifier "
                          "names to ganflow.Setting(default, help)")
    for key, setting in settings.items():
        try:
            if setting.default is not None:
                convert(setting, setting.default, f"{what} setting {key}")
        except (UsageError, PluginError) as exc:
            raise PluginError(f"plugin {plugin}: the default of {exc}") from None
    return dict(settings)
