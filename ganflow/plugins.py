"""Loads plugins and collects what they register into typed registries.

The rest of ganflow asks ``Plugins`` for a loss, dataset, architecture or recipe by name and
never calls pluggy itself.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pluggy

from ganflow import hookspecs
from ganflow.errors import PluginError, UsageError

ENTRY_POINT_GROUP = "ganflow"

# The built-in plugins, loaded by name exactly as a third-party module would be.
DEFAULT_PLUGINS = (
    "ganflow_plugins.losses",
    "ganflow_plugins.datasets",
    "ganflow_plugins.dcgan",
    "ganflow_plugins.toy",
    "ganflow_plugins.gmm",
    "ganflow_plugins.features",
)


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, the object, the plugin that registered it."""

    name: str
    obj: Any
    plugin: str
    description: str = ""
    argument: str | None = None  # datasets, architectures: the placeholder after "name:"
    argument_optional: bool = False

    @property
    def usage(self) -> str:
        """How the name is written: ``folder:PATH``, ``mlp[:SIZES]`` or ``digits``."""
        if not self.argument:
            return self.name
        return f"{self.name}[:{self.argument}]" if self.argument_optional else f"{self.name}:{self.argument}"


class Registry:
    """Named things of one kind; refuses duplicates and answers unknown names helpfully."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        if not isinstance(entry.name, str) or not entry.name or ":" in entry.name:
            raise PluginError(
                f"plugin {entry.plugin} registered a {self.kind} named {entry.name!r}: "
                "a name must be a non-empty string without ':'"
            )
        if entry.name in self._entries:
            first = self._entries[entry.name].plugin
            raise PluginError(
                f"{self.kind} {entry.name!r} is registered by two plugins, {first} and "
                f"{entry.plugin}: uninstall one of them or rename its {self.kind}"
            )
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(self._unknown(name)) from None

    def _unknown(self, name: str) -> str:
        known = sorted(self._entries)
        message = f"unknown {self.kind} {name!r}; known: {', '.join(known) or '(none)'}"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        return message

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __contains__(self, name: str) -> bool:
        return name in self._entries


class Plugins:
    """Everything the loaded plugins registered."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.losses = Registry("loss")
        self.datasets = Registry("dataset")
        self.architectures = Registry("architecture")
        self.recipes = Registry("recipe")
        self.features = Registry("feature extractor")
        self._collect("ganflow_register_losses", self.losses)
        self._collect("ganflow_register_datasets", self.datasets, takes_argument=True)
        self._collect("ganflow_register_architectures", self.architectures, takes_argument=True)
        self._collect("ganflow_register_recipes", self.recipes)
        self._collect("ganflow_register_feature_extractors", self.features)

    def _collect(self, hook_name: str, registry: Registry, takes_argument=False) -> None:
        # Each implementation is called on its own so every registration knows its plugin,
        # which is what lets a duplicate name point at both plugins.
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(name, obj, description="", argument=None, argument_optional=False,
                         _plugin=plugin):
                if argument is not None and not takes_argument:
                    raise PluginError(
                        f"plugin {_plugin}: only datasets and architectures take an argument")
                registry.add(Entry(name, obj, _plugin, description, argument,
                                   bool(argument_optional)))

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {plugin} failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc

    def dataset(self, spec: str) -> tuple[Entry, str | None]:
        """Look up ``NAME`` or ``NAME:ARGUMENT``; returns the entry and the argument."""
        return self._lookup(self.datasets, "--dataset", spec)

    def architecture(self, spec: str) -> tuple[Entry, Any]:
        """Look up ``NAME`` or ``NAME:ARGUMENT``; returns the entry and the architecture.

        An architecture registered with an argument is a factory, called with the argument
        (None when an optional one is left out).
        """
        entry, argument = self._lookup(self.architectures, "--arch", spec)
        if not entry.argument:
            return entry, entry.obj
        try:
            return entry, entry.obj(argument)
        except UsageError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {entry.plugin}: architecture {spec!r} failed to build: "
                              f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _lookup(registry: Registry, option: str, spec: str) -> tuple[Entry, str | None]:
        name, sep, argument = spec.partition(":")
        entry = registry.get(name)
        if entry.argument and not argument and not entry.argument_optional:
            raise UsageError(
                f"{registry.kind} {name!r} needs an argument: {option} {name}:{entry.argument}"
            )
        if sep and not entry.argument:
            raise UsageError(f"{registry.kind} {name!r} takes no argument: use {option} {name}")
        return entry, (argument if sep and argument else None)


def load_plugins(plugin_modules: tuple[str, ...] = ()) -> Plugins:
    """Load built-ins, then the ``ganflow`` entry points, then each ``--plugin-module``."""
    pm = pluggy.PluginManager("ganflow")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        _register(pm, importlib.import_module(name), name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (entry point {ep.value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _register(pm, module, ep.name)
    for spec in plugin_modules:
        _register(pm, _import_plugin_module(spec), spec)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        unknown = sorted(name for name, caller in vars(pm.hook).items()
                         if caller.spec is None and caller.get_hookimpls())
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)} implements {', '.join(unknown)}, which is not a "
            f"ganflow hook; the hooks are: {', '.join(_hook_names())}"
        ) from exc
    return Plugins(pm)


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("ganflow_"))


def _register(pm: pluggy.PluginManager, module, name: str) -> None:
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name} is invalid: {exc}") from exc


def _import_plugin_module(spec: str):
    """A ``--plugin-module`` value: a path to a .py file, or an importable module name."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise UsageError(f"--plugin-module {spec}: no such file")
            module_name = f"ganflow_local_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except UsageError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin module {spec!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
