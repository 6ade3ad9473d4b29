"""The first step of a run: every plugin its settings name, looked up and checked.

``configure`` layers a recipe's defaults under a config file and the flags (each setting
remembers its layer, ``RunConfig.set_by``); ``resolve`` looks up every plugin the settings
name, checks every plugin setting, and builds the two objects a run needs to know its path
(the trainer: networks or a density fitted at once?) and its shape (the architecture), into
one immutable ``Resolved``. Nothing here loads data or touches TensorFlow: a typo costs
milliseconds, and ``--cpu-devices`` can still split the CPU afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ganflow.config import FLAGS, RunConfig, recipe_layer
from ganflow.config import resolve as resolve_layers
from ganflow.kinds import KINDS
from ganflow.entries import Component, build_architecture
from ganflow.plugins import REPEATED, Plugins


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
    ``ganflow.kinds.KINDS``.
    """

    config: RunConfig
    plugins: Plugins  # what was loaded: an evaluation's default extractor is looked up there
    components: Mapping[str, Component]
    trainer: Any  # the trainer object: build(setup) or fit_density(setup)
    architecture: Any

    @property
    def fits_density(self) -> bool:
        """Whether the trainer fits a density at once (maximum likelihood) instead of
        training networks."""
        return callable(getattr(self.trainer, "fit_density", None))

    def optimizer(self, network: str) -> Component:
        return self.components[f"{network[0]}_optimizer"]

    def named(self, prefix: str) -> list[tuple[str, Component]]:
        """The (registered name, component) of each slot ``prefix.NAME``, in order: the
        regularizers (``regularizer``), the augmentations (``augment``)."""
        return [(slot.split(".", 1)[1].rstrip(REPEATED), component)
                for slot, component in self.components.items()
                if slot.startswith(prefix + ".")]

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
                yield slot.rstrip(REPEATED), component


def resolve(config: RunConfig, plugins: Plugins) -> Resolved:
    """Look up every name of the run and check every setting (see the module docstring);
    the output folder is made absolute, so ``ganflow resume`` finds the checkpoints from
    anywhere."""
    config = replace(config, output_dir=str(Path(config.output_dir).expanduser().resolve()))
    components = plugins.choose_all(config)
    return Resolved(
        config=config,
        plugins=plugins,
        components=MappingProxyType(components),
        trainer=components["trainer"].build(),
        architecture=build_architecture(components["arch"]),
    )
