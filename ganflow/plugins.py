"""Loads plugins and collects what they register into typed registries.

The rest of ganflow asks ``Plugins`` for a loss, dataset, architecture, recipe, ... by name
and never calls pluggy itself. Everything a plugin registers is checked when it registers;
everything a plugin's code does later goes through ``call``, which turns its failures into
one line naming the plugin.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pluggy

from ganflow import hookspecs
from ganflow.errors import GanflowError, PluginError, UsageError, last_line
from ganflow.settings import Setting, check_declarations, convert, resolve, split_spec

ENTRY_POINT_GROUP = "ganflow"
HOOK_PREFIX = "ganflow_"

# The built-in plugins, loaded by name exactly as a third-party module would be.
DEFAULT_PLUGINS = (
    "ganflow_plugins.losses",
    "ganflow_plugins.regularizers",
    "ganflow_plugins.augment",
    "ganflow_plugins.optimizers",
    "ganflow_plugins.trainers",
    "ganflow_plugins.datasets",
    "ganflow_plugins.dcgan",
    "ganflow_plugins.toy",
    "ganflow_plugins.gmm",
    "ganflow_plugins.features",
)


@dataclass(frozen=True)
class Entry:
    """One registered thing: its kind and name, the object, the plugin that registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str
    description: str = ""
    argument: str | None = None  # datasets, architectures: the placeholder after "name:"
    argument_optional: bool = False
    settings: dict[str, Setting] = field(default_factory=dict)

    @property
    def usage(self) -> str:
        """How the name is written: ``folder:PATH``, ``mlp[:SIZES]``, ``wgan[:SETTINGS]``."""
        if self.settings:
            return f"{self.name}[:SETTINGS]"
        if not self.argument:
            return self.name
        return f"{self.name}[:{self.argument}]" if self.argument_optional else f"{self.name}:{self.argument}"

    def call(self, doing: str, function: Callable, *args, **kwargs):
        """``function(*args, **kwargs)``: a failure in the plugin's code becomes a PluginError
        that names the plugin, this entry and what it was doing, with the error's last line.
        A ``GanflowError`` the plugin raised on purpose passes as it is."""
        try:
            return function(*args, **kwargs)
        except GanflowError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {self.plugin}: {self.kind} {self.name!r} failed {doing}: "
                f"{type(exc).__name__}: {last_line(exc)}".rstrip(": ")
                + " (ganflow --debug shows the traceback)") from exc


@dataclass(frozen=True)
class Component:
    """A registered thing with the settings a run gives it (``--loss wgan:gp=5``)."""

    entry: Entry
    values: dict[str, Any]

    @property
    def name(self) -> str:
        return self.entry.name

    def build(self, *args):
        """The object a run uses: the registered factory called with ``args`` and the
        settings, or the registered object itself when it takes neither."""
        if not args and not self.entry.settings:
            return self.entry.obj
        return self.entry.call("to build", self.entry.obj, *args, **self.values)

    def params(self, prefix: str) -> dict[str, Any]:
        """Each setting that has a value as an MLflow param: ``{prefix}.{key}``."""
        return {f"{prefix}.{key}": value for key, value in self.values.items()
                if value is not None}


class Registry:
    """Named things of one kind; refuses duplicates and answers unknown names helpfully."""

    def __init__(self, kind: str, check: Callable[[Entry], None] | None = None,
                 takes_argument: bool = False, takes_settings: bool = False):
        self.kind = kind
        self.check = check
        self.takes_argument = takes_argument
        self.takes_settings = takes_settings
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
        if self.check is not None:
            self.check(entry)
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


def _problem(entry: Entry, text: str) -> PluginError:
    return PluginError(f"plugin {entry.plugin}: {entry.kind} {entry.name!r} {text}")


def _not_a_class(entry: Entry) -> None:
    """A class registered without settings would be used as the object itself, uncalled."""
    if inspect.isclass(entry.obj) and not entry.settings:
        raise _problem(entry, f"is the class {entry.obj.__name__}: register an instance "
                              f"({entry.obj.__name__}()), or declare settings to make the class "
                              "a factory called with them")


def _check_loss(entry: Entry) -> None:
    from ganflow.step import loss_protocol

    _not_a_class(entry)
    if entry.settings:
        if not callable(entry.obj):
            raise _problem(entry, "declares settings, so it must be a factory (e.g. the "
                                  "class) called with them")
    elif loss_protocol(entry.obj) is None:
        raise _problem(entry, f"is a {type(entry.obj).__name__}, not a loss: give it "
                              "d_loss(step) and g_loss(step) (subclass ganflow.StepLoss), or "
                              "discriminator_loss(real_logits, fake_logits) and "
                              "generator_loss(fake_logits) (ganflow.Loss)")


def _check_regularizer(entry: Entry) -> None:
    from ganflow.step import check_regularizer

    _not_a_class(entry)
    if "every" in entry.settings:
        raise _problem(entry, "declares the setting 'every', which the engine gives every "
                              "regularizer: rename it")
    if not entry.settings:
        try:
            check_regularizer(entry.obj)
        except PluginError as exc:
            raise _problem(entry, str(exc)) from None
    elif not callable(entry.obj):
        raise _problem(entry, "declares settings, so it must be a factory called with them")


def _check_callable(what: str):
    def check(entry: Entry) -> None:
        if not callable(entry.obj):
            raise _problem(entry, f"must be {what}, got a {type(entry.obj).__name__}")
    return check


def _check_augmentation(entry: Entry) -> None:
    _not_a_class(entry)
    _check_callable("a factory called with its settings" if entry.settings
                    else "callable as augmentation(x, seed_generator)")(entry)


def _check_architecture(entry: Entry) -> None:
    if entry.argument:
        _check_callable("a factory called with the argument")(entry)
    elif not (hasattr(entry.obj, "build_generator") or hasattr(entry.obj, "fit")):
        raise _problem(entry, "has neither build_generator(spec, latent_dim) and "
                              "build_discriminator(spec) nor fit(source, seed)")


def _check_trainer(entry: Entry) -> None:
    _not_a_class(entry)
    if entry.settings:
        _check_callable("a factory called with its settings")(entry)
    elif not (callable(getattr(entry.obj, "build", None)) or
              callable(getattr(entry.obj, "fit_density", None))):
        raise _problem(entry, "has neither build(setup) nor fit_density(setup)")


def _check_recipe(entry: Entry) -> None:
    """Setting names, types and ranges; the plugin names in it are checked once every plugin
    has registered (``Plugins.check_recipes``)."""
    from ganflow.config import recipe_layer
    from ganflow.config import resolve as resolve_config

    if not isinstance(entry.obj, dict):
        raise _problem(entry, f"must be a dict of settings, got a {type(entry.obj).__name__}")
    try:
        resolve_config(recipe_layer(entry.name, entry.obj))
    except UsageError as exc:
        raise PluginError(f"plugin {entry.plugin}: {exc} (`ganflow settings` lists every "
                          "setting by its config name)") from None


# The engine's own setting of every regularizer.
EVERY = Setting(1, "run on every N-th update of its network only, multiplied by N", minimum=1)

# hook name -> (attribute, kind, check, takes an argument, takes settings), in the order
# `ganflow plugins` lists them.
KINDS = {
    "ganflow_register_recipes": ("recipes", "recipe", _check_recipe, False, False),
    "ganflow_register_trainers": ("trainers", "trainer", _check_trainer, False, True),
    "ganflow_register_augmentations": ("augmentations", "augmentation", _check_augmentation,
                                       False, True),
    "ganflow_register_losses": ("losses", "loss", _check_loss, False, True),
    "ganflow_register_regularizers": ("regularizers", "regularizer", _check_regularizer,
                                      False, True),
    "ganflow_register_optimizers": ("optimizers", "optimizer",
                                    _check_callable("a factory(learning_rate, **settings)"),
                                    False, True),
    "ganflow_register_schedules": ("schedules", "learning-rate schedule",
                                   _check_callable("a factory(learning_rate, total_steps, "
                                                   "**settings)"), False, True),
    "ganflow_register_datasets": ("datasets", "dataset", _check_callable("a loader(options)"),
                                  True, False),
    "ganflow_register_architectures": ("architectures", "architecture", _check_architecture,
                                       True, False),
    "ganflow_register_feature_extractors": ("features", "feature extractor",
                                            _check_callable("a factory(options)"), False, False),
}
# How `ganflow plugins` titles a registry, where its attribute name would not do.
TITLES = {"features": "feature extractors", "schedules": "learning-rate schedules"}


class Plugins:
    """Everything the loaded plugins registered."""

    losses: Registry
    regularizers: Registry
    augmentations: Registry
    trainers: Registry
    optimizers: Registry
    schedules: Registry
    datasets: Registry
    architectures: Registry
    recipes: Registry
    features: Registry

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        for hook_name, (attribute, kind, check, argument, settings) in KINDS.items():
            registry = Registry(kind, check, argument, settings)
            setattr(self, attribute, registry)
            self._collect(hook_name, registry)
        self.check_recipes()

    def check_recipes(self) -> None:
        """Every name and plugin setting a recipe gives exists and is valid (nothing is built
        or loaded): a recipe's typo shows in ``ganflow plugins``, not only when it runs."""
        from ganflow.config import recipe_layer
        from ganflow.config import resolve as resolve_config

        for entry in self.recipes:
            config = resolve_config(recipe_layer(entry.name, entry.obj))
            try:
                self.component(self.trainers, config.trainer, "trainer")
                self.component(self.losses, config.loss, "loss")
                self.component(self.schedules, config.lr_schedule, "lr_schedule")
                for key in ("optimizer", "g_optimizer", "d_optimizer"):
                    if getattr(config, key):
                        self.component(self.optimizers, getattr(config, key), key)
                for spec in config.regularizers:
                    self.regularizer(spec)
                for spec in config.augment:
                    self.component(self.augmentations, spec, "augment")
                self._lookup(self.architectures, "arch", config.arch)
                self._lookup(self.datasets, "dataset", config.dataset)
                if config.features:
                    self.features.get(config.features)
            except UsageError as exc:
                raise PluginError(f"plugin {entry.plugin}: recipe {entry.name}: {exc}") from None

    @property
    def registries(self) -> dict[str, Registry]:
        """Every registry by its title (``losses``, ``feature extractors``), in the order
        ``ganflow plugins`` lists them."""
        return {TITLES.get(attribute, attribute): getattr(self, attribute)
                for attribute, *_ in KINDS.values()}

    def _collect(self, hook_name: str, registry: Registry) -> None:
        # Each implementation is called on its own so every registration knows its plugin,
        # which is what lets a duplicate name point at both plugins.
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(name, obj, description="", argument=None, argument_optional=False,
                         settings=None, _plugin=plugin):
                if argument is not None and not registry.takes_argument:
                    raise PluginError(
                        f"plugin {_plugin}: only datasets and architectures take an argument")
                if settings is not None and not registry.takes_settings:
                    raise PluginError(f"plugin {_plugin}: a {registry.kind} takes no settings")
                declared = check_declarations(settings, _plugin, f"{registry.kind} {name!r}")
                registry.add(Entry(registry.kind, name, obj, _plugin, description, argument,
                                   bool(argument_optional), declared))

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {plugin} failed in {hook_name}: {type(exc).__name__}: "
                    f"{last_line(exc)}") from exc

    def component(self, registry: Registry, spec: str, option: str,
                  given: dict[str, Any] | None = None) -> Component:
        """Look up ``NAME`` or ``NAME:key=value,...``; settings checked against the entry's
        declarations (``given``: more settings, as text or typed values)."""
        name, values = split_spec(spec)
        entry = registry.get(name)
        what = f"{option} {name}: {registry.kind} {name!r}"
        return Component(entry, resolve(entry.settings, {**values, **(given or {})}, what))

    def regularizer(self, spec: str) -> tuple[Component, int]:
        """``--regularizer NAME[:SETTINGS]``: the regularizer and its ``every`` (the engine's
        own setting of every regularizer)."""
        name, values = split_spec(spec)
        every = convert(EVERY, values.pop("every", EVERY.default),
                        f"--regularizer {name}: setting every")
        return self.component(self.regularizers, name, "--regularizer", given=values), every

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
        return entry, entry.call(f"to build from {spec!r}", entry.obj, argument)

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
    """Load built-ins, then the ``ganflow`` entry points, then each ``--plugin-module``.

    A module already loaded (installed and also given by name or path, or given twice) is
    loaded once.
    """
    pm = pluggy.PluginManager("ganflow")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        _register(pm, importlib.import_module(name), name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (entry point {ep.value}) failed to import: "
                f"{type(exc).__name__}: {last_line(exc)}"
            ) from exc
        known = pm.get_plugin(ep.name)
        if known is not None and known is not module:
            raise PluginError(f"two plugins are named {ep.name!r}: {ep.value} and "
                              f"{getattr(known, '__name__', known)}: uninstall one of them")
        _register(pm, module, ep.name)
    for spec in plugin_modules:
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
    return Plugins(pm)


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
    except Exception as exc:
        raise PluginError(
            f"plugin module {spec!r} failed to import: {type(exc).__name__}: {last_line(exc)}"
        ) from exc
