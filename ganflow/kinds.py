"""The kinds of plugin: one table that everything listing, checking or naming kinds reads.

Each ``Kind`` says which hook registers it, which registry holds it, what a registration
must look like, how a run's settings name one (``loss: wgan:gp=5``, ``regularizers: [r1]``,
``g_optimizer`` falling back to ``optimizer``) and so under which name it becomes MLflow
params (``loss.gp``) and a provider tag (``ganflow.plugin.loss``). The registries, the
`ganflow plugins` listing, the recipe checks and a run's resolution all go through ``KINDS``:
a new kind is one entry here and its hookspec in ``ganflow.hookspecs``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ganflow.errors import PluginError, UsageError
from ganflow.settings import Setting


@dataclass(frozen=True)
class Use:
    """One place a run uses a kind: ``slot`` names it in params and provider tags
    (``{name}`` stands for the registered name, for a list of them), ``keys`` the settings
    that name it, the first one set winning (``g_optimizer``, else ``optimizer``);
    ``repeatable``: a list may name one twice (an augmentation applied twice)."""

    slot: str
    keys: tuple[str, ...]
    repeatable: bool = False


@dataclass(frozen=True)
class Kind:
    """A kind of plugin (see the module docstring)."""

    name: str  # what messages call one: "loss", "feature extractor"
    hook: str  # the hook that registers them
    attribute: str  # the registry's attribute on ``ganflow.plugins.Plugins``
    check: Callable[[Any], None]  # refuses a malformed registration (gets the Entry)
    title: str = ""  # how `ganflow plugins` titles the list (default: ``attribute``)
    argument: bool = False  # registered with ``argument=``: named NAME:ARGUMENT
    settings: bool = False  # registered with ``settings=``: named NAME:key=value,...
    # (a kind may take both; each registration then takes one or the other)
    uses: tuple[Use, ...] = ()  # how a run's settings name one (none: recipes)
    # Settings the engine gives every one of the kind, beside the plugin's own.
    engine_settings: dict[str, Setting] = field(default_factory=dict)

    @property
    def heading(self) -> str:
        return self.title or self.attribute


def problem(entry, text: str) -> PluginError:
    return PluginError(f"plugin {entry.plugin}: {entry.kind} {entry.name!r} {text}")


def _not_a_class(entry) -> None:
    """A class registered without settings would be used as the object itself, uncalled."""
    if inspect.isclass(entry.obj) and not entry.settings:
        raise problem(entry, f"is the class {entry.obj.__name__}: register an instance "
                             f"({entry.obj.__name__}()), or declare settings to make the class "
                             "a factory called with them")


def _callable(what: str):
    def check(entry) -> None:
        if not callable(entry.obj):
            raise problem(entry, f"must be {what}, got a {type(entry.obj).__name__}")
    return check


def _factory_or(check_object: Callable[[Any], None]):
    """A registration with settings is a factory; without, ``check_object`` checks it."""
    def check(entry) -> None:
        _not_a_class(entry)
        if entry.settings:
            _callable("a factory called with its settings")(entry)
        else:
            check_object(entry)
    return check


def _loss(entry) -> None:
    from ganflow.step import loss_protocol

    if loss_protocol(entry.obj) is None:
        raise problem(entry, f"is a {type(entry.obj).__name__}, not a loss: give it "
                             "d_loss(step) and g_loss(step) (subclass ganflow.StepLoss), or "
                             "discriminator_loss(real_logits, fake_logits) and "
                             "generator_loss(fake_logits) (ganflow.Loss)")


def _regularizer(entry) -> None:
    from ganflow.step import check_regularizer

    try:
        check_regularizer(entry.obj)
    except PluginError as exc:
        raise problem(entry, str(exc)) from None


def _regularizer_registration(entry) -> None:
    if "every" in entry.settings:
        raise problem(entry, "declares the setting 'every', which the engine gives every "
                             "regularizer: rename it")
    _factory_or(_regularizer)(entry)


def _trainer(entry) -> None:
    if not (callable(getattr(entry.obj, "build", None)) or
            callable(getattr(entry.obj, "fit_density", None))):
        raise problem(entry, "has neither build(setup) nor fit_density(setup)")


def _architecture(entry) -> None:
    if entry.argument:
        _callable("a factory called with the argument")(entry)
    elif entry.settings:
        _callable("a factory called with its settings")(entry)
    elif not (hasattr(entry.obj, "build_generator") or hasattr(entry.obj, "fit")):
        raise problem(entry, "has neither build_generator(spec, latent_dim) and "
                             "build_discriminator(spec) nor fit(source, seed)")


def _recipe(entry) -> None:
    """Setting names, types and ranges; the plugin names in it are checked once every plugin
    has registered (``Plugins.check_recipes``)."""
    from ganflow.config import recipe_layer, resolve

    if not isinstance(entry.obj, dict):
        raise problem(entry, f"must be a dict of settings, got a {type(entry.obj).__name__}")
    try:
        resolve(recipe_layer(entry.name, entry.obj))
    except UsageError as exc:
        raise PluginError(f"plugin {entry.plugin}: {exc} (`ganflow settings` lists every "
                          "setting by its config name)") from None


# The engine's own setting of every regularizer.
EVERY = Setting(1, "run on every N-th update of its network only, multiplied by N", minimum=1)

# In the order `ganflow plugins` lists them.
KINDS = (
    Kind("recipe", "ganflow_register_recipes", "recipes", _recipe),
    Kind("trainer", "ganflow_register_trainers", "trainers", _factory_or(_trainer),
         settings=True, uses=(Use("trainer", ("trainer",)),)),
    Kind("augmentation", "ganflow_register_augmentations", "augmentations",
         _factory_or(_callable("callable as augmentation(x, seed_generator)")), settings=True,
         uses=(Use("augment.{name}", ("augment",), repeatable=True),)),
    Kind("loss", "ganflow_register_losses", "losses", _factory_or(_loss), settings=True,
         uses=(Use("loss", ("loss",)),)),
    Kind("regularizer", "ganflow_register_regularizers", "regularizers",
         _regularizer_registration, settings=True,
         uses=(Use("regularizer.{name}", ("regularizers",)),), engine_settings={"every": EVERY}),
    Kind("optimizer", "ganflow_register_optimizers", "optimizers",
         _callable("a factory(learning_rate, **settings)"), settings=True,
         uses=(Use("g_optimizer", ("g_optimizer", "optimizer")),
               Use("d_optimizer", ("d_optimizer", "optimizer")))),
    Kind("learning-rate schedule", "ganflow_register_schedules", "schedules",
         _callable("a factory(learning_rate, total_steps, **settings)"),
         title="learning-rate schedules", settings=True,
         uses=(Use("lr_schedule", ("lr_schedule",)),)),
    Kind("dataset", "ganflow_register_datasets", "datasets", _callable("a loader(options)"),
         argument=True, uses=(Use("dataset", ("dataset",)),)),
    Kind("architecture", "ganflow_register_architectures", "architectures", _architecture,
         argument=True, settings=True, uses=(Use("arch", ("arch",)),)),
    Kind("feature extractor", "ganflow_register_feature_extractors", "features",
         _callable("a factory(options)"), title="feature extractors",
         uses=(Use("features", ("features",)),)),
)
BY_NAME = {kind.name: kind for kind in KINDS}
