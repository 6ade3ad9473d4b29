"""Loads plugins and collects what they register into typed registries.

The rest of ganflow asks ``Plugins`` for a loss, dataset, architecture, recipe, ... by name
and never calls pluggy itself. Everything a plugin registers is checked when it registers;
everything a plugin's code does later goes through ``call``, which turns its failures into
one line naming the plugin. Which kinds there are, and how a run names each, is
``ganflow.kinds.KINDS``.

``load_plugins`` leaves out what ``--disable-plugin`` names and, with
``GANFLOW_DISABLE_PLUGIN_AUTOLOAD=1``, every installed package's entry points (docs/running.md,
"What ganflow loads", says what a user sees).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from ganflow import hookspecs
from ganflow.entries import Component, Entry, Registry, UnknownName, build_architecture
from ganflow.errors import PluginError, UsageError, last_line
from ganflow.kinds import BY_NAME, KINDS, Kind
from ganflow.settings import check_declarations, convert, resolve, split_spec

__all__ = ["Component", "Entry", "Plugins", "Registry", "UnknownName", "build_architecture",
           "load_plugins"]

ENTRY_POINT_GROUP = "ganflow"
HOOK_PREFIX = "ganflow_"
NO_AUTOLOAD = "GANFLOW_DISABLE_PLUGIN_AUTOLOAD"
REPEATED = "#"  # marks the slot of a plugin named again (``--augment translation`` twice)

# The built-in plugins, loaded by name exactly as a third-party module would be.
DEFAULT_PLUGINS = (
    "ganflow_plugins.losses",
    "ganflow_plugins.regularizers",
    "ganflow_plugins.augment",
    "ganflow_plugins.ada",
    "ganflow_plugins.optimizers",
    "ganflow_plugins.trainers",
    "ganflow_plugins.datasets",
    "ganflow_plugins.stacked",
    "ganflow_plugins.dcgan",
    "ganflow_plugins.resnet",
    "ganflow_plugins.stylegan2",
    "ganflow_plugins.toy",
    "ganflow_plugins.gmm",
    "ganflow_plugins.features",
)


@dataclass(frozen=True)
class SwitchedOff:
    """What was not loaded: the built-in modules switched off and what they register (kind,
    name), and whether a third-party plugin was (never imported: what it registers is not
    known)."""

    builtins: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> module
    third_party: bool = False

    def why(self, kind: str, name: str) -> str | None:
        """Why a recipe naming ``kind`` ``name``, which nothing loaded registers, goes: None
        when nothing switched off could have provided it (the recipe's own mistake)."""
        if (kind, name) in self.builtins:
            return (f"it uses {kind} {name!r}, from {self.builtins[kind, name]}, which is "
                    "switched off (--disable-plugin)")
        if self.third_party:
            return (f"it uses {kind} {name!r}, which no plugin loaded now provides (one "
                    "switched off by --disable-plugin or GANFLOW_DISABLE_PLUGIN_AUTOLOAD may)")
        return None


class Plugins:
    """Everything the loaded plugins registered: one ``Registry`` per kind of
    ``ganflow.kinds.KINDS``, as the attribute the table names (``plugins.losses``)."""

    def __init__(self, pm: pluggy.PluginManager, switched_off: SwitchedOff | None = None):
        self.pm = pm
        self.switched_off = switched_off or SwitchedOff()
        for kind in KINDS:
            registry = Registry(kind)
            setattr(self, kind.attribute, registry)
            self._collect(kind, registry)
        self.check_recipes()

    def check_recipes(self) -> None:
        """Every name and plugin setting a recipe gives exists and is valid (nothing is built
        or loaded): a recipe's typo shows in ``ganflow plugins``, not only when it runs.

        With plugins switched off, a recipe naming what no loaded plugin provides goes with
        them: listed nowhere, and refused, saying why, if asked for."""
        from ganflow.config import recipe_layer
        from ganflow.config import resolve as resolve_config

        for entry in list(self.recipes):
            config = resolve_config(recipe_layer(entry.name, entry.obj))
            try:
                self.choose_all(config)
            except UnknownName as exc:
                why = self.switched_off.why(exc.kind, exc.name)
                if why is None:
                    raise PluginError(f"plugin {entry.plugin}: recipe {entry.name}: {exc}") \
                        from None
                self.recipes.remove(entry.name, why)
            except UsageError as exc:
                raise PluginError(f"plugin {entry.plugin}: recipe {entry.name}: {exc}") from None

    def choose_all(self, config) -> dict[str, Component]:
        """Every plugin ``config`` names, by slot (``loss``, ``regularizer.r1``,
        ``g_optimizer``, ``arch``, ...; see ``ganflow.kinds.Use``), looked up with its settings
        checked, in the order of ``KINDS``. A setting left unset (``features``) is absent."""
        from ganflow.config import flag

        chosen: dict[str, Component] = {}
        for kind in KINDS:
            for use in kind.uses:
                key = next((k for k in use.keys if getattr(config, k)), None)
                if key is None:
                    continue
                specs = getattr(config, key)
                for spec in (specs if isinstance(specs, tuple) else (specs,)):
                    component = self.choose(kind.name, spec, flag(key))
                    slot = use.slot.format(name=component.name)
                    if slot in chosen and not use.repeatable:
                        names = ", ".join(split_spec(spec)[0] for spec in specs)
                        raise UsageError(f"{flag(key)}: each {kind.name} may be given once, "
                                         f"got {names}")
                    while slot in chosen:  # a repeated one: its params are the last's
                        slot += REPEATED
                    chosen[slot] = component
        return chosen

    def registry(self, kind: str) -> Registry:
        return getattr(self, BY_NAME[kind].attribute)

    @property
    def registries(self) -> dict[str, Registry]:
        """Every registry by its title (``losses``, ``feature extractors``), in the order
        ``ganflow plugins`` lists them."""
        return {kind.heading: getattr(self, kind.attribute) for kind in KINDS}

    def _collect(self, kind: Kind, registry: Registry) -> None:
        # Each implementation is called on its own so every registration knows its plugin,
        # which is what lets a duplicate name point at both plugins.
        for impl in getattr(self.pm.hook, kind.hook).get_hookimpls():
            plugin = impl.plugin_name

            def register(name, obj, description="", argument=None, argument_optional=False,
                         settings=None, _plugin=plugin):
                if argument is not None and not kind.argument:
                    raise PluginError(
                        f"plugin {_plugin}: only datasets and architectures take an argument")
                if settings is not None and not kind.settings:
                    raise PluginError(f"plugin {_plugin}: a {kind.name} takes no settings")
                if settings is not None and argument is not None:
                    raise PluginError(f"plugin {_plugin}: {kind.name} {name!r} is registered "
                                      "with both an argument and settings: give one")
                declared = check_declarations(settings, _plugin, f"{kind.name} {name!r}")
                registry.add(Entry(kind.name, name, obj, _plugin, description, argument,
                                   bool(argument_optional), declared))

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except (Exception, SystemExit) as exc:
                raise PluginError(f"plugin {plugin} failed in {kind.hook}: {_failure(exc)}") \
                    from exc

    def choose(self, kind: str, spec: str, option: str) -> Component:
        """``spec`` as a run names one of ``kind``: ``NAME``, ``NAME:key=value,...`` (its
        settings checked against the entry's declarations, and the engine's own), or
        ``NAME:ARGUMENT`` for the kinds that take an argument; ``option`` names the flag in
        errors."""
        registry = self.registry(kind)
        entry = registry.get(spec.partition(":")[0].strip())
        if registry.spec.argument and not entry.settings:
            entry, argument = self._lookup(registry, option, spec)
            return Component(entry, argument=argument)
        name, values = split_spec(spec)
        engine = {key: convert(setting, values.pop(key, setting.default),
                               f"{option} {name}: setting {key}")
                  for key, setting in registry.spec.engine_settings.items()}
        what = f"{option} {name}: {registry.kind} {name!r}"
        return Component(entry, resolve(entry.settings, values, what), engine=engine)

    def component(self, registry: Registry, spec: str, option: str) -> Component:
        """``choose`` by registry (``plugins.component(plugins.losses, "wgan:gp=5", "--loss")``)."""
        return self.choose(registry.kind, spec, option)

    def dataset(self, spec: str) -> tuple[Entry, str | None]:
        """Look up ``NAME`` or ``NAME:ARGUMENT``; returns the entry and the argument."""
        chosen = self.choose("dataset", spec, "--dataset")
        return chosen.entry, chosen.argument

    def architecture(self, spec: str) -> tuple[Entry, Any]:
        """Look up ``NAME`` or ``NAME:ARGUMENT``; returns the entry and the architecture
        (``build_architecture``)."""
        chosen = self.choose("architecture", spec, "--arch")
        return chosen.entry, build_architecture(chosen)

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


def load_plugins(plugin_modules: tuple[str, ...] = (), disable: tuple[str, ...] = ()) -> Plugins:
    """Load built-ins, then the ``ganflow`` entry points, then each ``--plugin-module``, but
    none that ``disable`` names (see the module docstring).

    A module already loaded (installed and also given by name or path, or given twice) is
    loaded once.
    """
    pm = pluggy.PluginManager("ganflow")
    pm.add_hookspecs(hookspecs)
    autoload = os.environ.get(NO_AUTOLOAD, "").strip() in ("", "0")
    installed = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    _check_disabled(disable, [*DEFAULT_PLUGINS, *(ep.name for ep in installed), *plugin_modules])
    for name in disable:
        pm.set_blocked(name)
    for name in DEFAULT_PLUGINS:
        if not pm.is_blocked(name):
            _register(pm, importlib.import_module(name), name)
    for ep in installed if autoload else ():
        if pm.is_blocked(ep.name):
            continue  # not even imported: a broken plugin switched off stays out of the way
        try:
            module = ep.load()
        except (Exception, SystemExit) as exc:
            raise PluginError(
                f"plugin {ep.name!r} (entry point {ep.value}) failed to import: "
                f"{_failure(exc)}; switch it off with --disable-plugin {ep.name}") from exc
        known = pm.get_plugin(ep.name)
        if known is not None and known is not module:
            raise PluginError(f"two plugins are named {ep.name!r}: {ep.value} and "
                              f"{getattr(known, '__name__', known)}: uninstall one of them")
        _register(pm, module, ep.name)
    for spec in plugin_modules:
        if pm.is_blocked(spec):
            continue
        module = _loaded_from(pm, spec) or _import_plugin_module(spec)
        _register(pm, module, spec)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        unknown = sorted(name for name, caller in vars(pm.hook).items()
                         if caller.spec is None and caller.get_hookimpls())
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)} implements {', '.join(unknown)}, which is not a "
            f"ganflow hook{_did_you_mean(unknown[0])}; the hooks are: "
            f"{', '.join(hook_names())}"
        ) from exc
    third_party = any(pm.is_blocked(ep.name) for ep in installed) or (
        not autoload and bool(installed)) or any(pm.is_blocked(m) for m in plugin_modules)
    off = SwitchedOff(_registered_by([name for name in DEFAULT_PLUGINS if pm.is_blocked(name)]),
                      third_party)
    return Plugins(pm, off)


def _registered_by(modules: list[str]) -> dict[tuple[str, str], str]:
    """(kind, name) -> module, for what the built-in ``modules`` register: what a recipe that
    names them loses when they are switched off."""
    registered: dict[tuple[str, str], str] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for kind in KINDS:
            hook = getattr(module, kind.hook, None)
            if hook is not None:
                hook(register=lambda name, *args, _kind=kind.name, **kwargs:
                     registered.setdefault((_kind, name), module_name))
    return registered


def _check_disabled(disable: tuple[str, ...], known: list[str]) -> None:
    for name in disable:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"--disable-plugin {name}: no plugin of that name{hint}; the "
                             f"plugins are: {', '.join(known)}")


def hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith(HOOK_PREFIX))


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, hook_names(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _register(pm: pluggy.PluginManager, module, name: str) -> None:
    if pm.is_registered(module):
        return  # the same module by another route: loading it twice must be harmless
    _check_undecorated(module, name)
    if pm.get_plugin(name) is not None:
        raise PluginError(f"two plugins are named {name!r}: {getattr(module, '__name__', module)}"
                          f" and {getattr(pm.get_plugin(name), '__name__', '?')}: rename one")
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name} is invalid: {exc}") from exc


def _check_undecorated(module, name: str) -> None:
    """A hook function without ``@ganflow.hookimpl`` would be silently ignored: refuse it."""
    import inspect

    for attribute, value in vars(module).items():
        if not attribute.startswith(HOOK_PREFIX) or not inspect.isfunction(value):
            continue
        if getattr(value, "ganflow_impl", None) is not None:
            continue
        if value.__module__ != getattr(module, "__name__", None):
            continue  # imported from elsewhere, not this plugin's own
        if attribute in hook_names():
            raise PluginError(f"plugin {name}: {attribute} is not decorated with "
                              "@ganflow.hookimpl, so ganflow would never call it: add the "
                              "decorator")
        if attribute.startswith(HOOK_PREFIX + "register_"):
            raise PluginError(f"plugin {name}: {attribute} is not a ganflow hook"
                              f"{_did_you_mean(attribute)} (and it lacks @ganflow.hookimpl); "
                              f"the hooks are: {', '.join(hook_names())}")


def _loaded_from(pm: pluggy.PluginManager, spec: str):
    """The already registered module that ``spec`` (a name or a path) names, if any."""
    if not (spec.endswith(".py") or Path(spec).exists()):
        module = sys.modules.get(spec)
        return module if module is not None and pm.is_registered(module) else None
    wanted = Path(spec).expanduser().resolve()
    for module in pm.get_plugins():
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() == wanted:
            return module
    return None


def _import_plugin_module(spec: str):
    """A ``--plugin-module`` value: a path to a .py file, or an importable module name."""
    path = Path(spec).expanduser()
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
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() as it loads
        raise PluginError(f"plugin module {spec!r} failed to import: {_failure(exc)}") from exc


def _failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while it was imported"
    return f"{type(exc).__name__}: {last_line(exc)}"
