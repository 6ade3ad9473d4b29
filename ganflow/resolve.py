"""The first step of a run: its settings, and every plugin they name, resolved and checked.

``configure`` layers a recipe's defaults under a config file and the flags; ``resolve`` looks
up every plugin the settings name, checks every plugin setting and builds the plugins' objects
(the loss, the regularizers, the augmentation chain, the architecture, the trainer) into one
immutable ``Resolved``. Nothing here loads data or builds a network: a typo costs milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from pathlib import Path
from typing import Any, Callable, Mapping

from ganflow.config import FLAGS, RunConfig, recipe_layer, resolve as resolve_layers
from ganflow.errors import PluginError
from ganflow.kinds import KINDS
from ganflow.plugins import Component, Plugins, build_architecture
from ganflow.step import Regularization, as_step_loss, check_regularizer


def configure(plugins: Plugins, recipe: str, flags: dict[str, Any] | None = None, *,
              given: list[tuple[str, dict]] | None = None) -> RunConfig:
    """The recipe's defaults under what the user gave: ``flags`` (settings by name, None
    meaning "not given"), or ``given``, layers as ``config.user_layers`` makes them (a config
    file's settings, then the flags)."""
    layers = given if given is not None else [(FLAGS, flags or {})]
    return resolve_layers(recipe_layer(recipe, plugins.recipes.get(recipe).obj), *layers)


@dataclass(frozen=True)
class Resolved:
    """A run's settings and plugins, every name looked up and every setting checked.

    ``components`` holds each plugin the settings name by its slot (``loss``,
    ``regularizer.r1``, ``g_optimizer``, ``arch``, ...: ``ganflow.kinds.Use``), in the order of
    ``ganflow.kinds.KINDS``; the rest are the objects built from them.
    """

    config: RunConfig
    plugins: Plugins  # what was loaded: an evaluation's default extractor is looked up there
    components: Mapping[str, Component]
    trainer: Any  # the trainer object: build(setup) or fit_density(setup)
    loss: Any  # the loss object as registered (a ganflow.StepLoss or a ganflow.Loss), checked
    regularizations: tuple[Regularization, ...]
    augment: Callable | None  # the --augment chain as one function (x, seed_generator) -> x
    architecture: Any

    def component(self, slot: str) -> Component | None:
        return self.components.get(slot)

    @property
    def fits_density(self) -> bool:
        """Whether the trainer fits a density at once (maximum likelihood) instead of
        training networks."""
        return callable(getattr(self.trainer, "fit_density", None))

    def optimizer(self, network: str) -> Component:
        return self.components[f"{network[0]}_optimizer"]

    def params(self, exclude=()) -> dict[str, Any]:
        """Every plugin setting, defaults included, as MLflow params (``loss.gp``,
        ``regularizer.r1.every``), but for the plugins named by the settings in
        ``exclude``."""
        out: dict[str, Any] = {}
        for slot, component in self._used(exclude):
            out.update(component.params(slot))
        return out

    def providers(self, exclude=()) -> dict[str, str]:
        """Which plugin provided each named thing, as run tags (``ganflow.plugin.loss``)."""
        return {f"ganflow.plugin.{slot}": component.plugin
                for slot, component in self._used(exclude)}

    def _used(self, exclude):
        named_by = {use.slot.split(".")[0]: use.keys for kind in KINDS for use in kind.uses}
        for slot, component in self.components.items():
            if not set(named_by[slot.split(".")[0]]) & set(exclude):
                yield slot, component


def resolve(config: RunConfig, plugins: Plugins) -> Resolved:
    """Look up every name of the run, check every setting and build every plugin object; the
    output folder is made absolute (so ``ganflow resume`` finds the checkpoints from
    anywhere) and checked writable: none of it may wait for a dataset to load."""
    from ganflow.tracking import check_writable

    check_writable(Path(config.output_dir), "--output-dir")
    config = replace(config, output_dir=str(Path(config.output_dir).expanduser().resolve()))
    components = plugins.choose_all(config)
    regularizations = tuple(
        Regularization(slot.split(".", 1)[1], _checked(component), component.engine["every"])
        for slot, component in components.items() if slot.startswith("regularizer."))
    steps = [component.build() for slot, component in components.items()
             if slot.startswith("augment.")]
    return Resolved(
        config=config,
        plugins=plugins,
        components=MappingProxyType(components),
        trainer=components["trainer"].build(),
        loss=_checked(components["loss"]),
        regularizations=regularizations,
        augment=_chain(steps) if steps else None,
        architecture=build_architecture(components["arch"]),
    )


def _chain(steps: list):
    def augment(x, seed_generator):
        for step in steps:
            x = step(x, seed_generator)
        return x

    return augment


def _checked(component: Component):
    """A loss or regularizer object, checked for its contract (a factory's product is only
    known once built)."""
    obj = component.build()
    try:
        if component.entry.kind == "loss":
            as_step_loss(obj)
        else:
            check_regularizer(obj)
    except PluginError as exc:
        raise component.entry.problem(exc) from None
    return obj

