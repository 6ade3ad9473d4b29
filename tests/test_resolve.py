"""The first step of a run: its settings' layers and every plugin they name, resolved into one
immutable record; nothing loaded."""

import dataclasses

import pytest

from ganflow.errors import UsageError
from ganflow.likelihood import GAN_ONLY
from ganflow.resolve import configure, resolve


def test_a_run_resolves_every_plugin_it_names_in_the_table_s_order(plugins, workdir):
    config = configure(plugins, "dcgan", {
        "regularizers": ("r1:gamma=2,every=4",), "augment": ("color", "translation:ratio=0.25"),
        "g_optimizer": "sgd", "features": "classifier"})
    resolved = resolve(config, plugins)
    assert list(resolved.components) == [
        "trainer", "augment.color", "augment.translation", "loss", "regularizer.r1",
        "g_optimizer", "d_optimizer", "lr_schedule", "dataset", "arch", "features"]
    # G's optimizer is its own; D's falls back to --optimizer, the recipe's Adam.
    assert (resolved.optimizer("generator").name, resolved.optimizer("discriminator").name) == \
        ("sgd", "adam")
    ((name, r1),) = resolved.named("regularizer")
    assert (name, r1.engine["every"], r1.values["gamma"]) == ("r1", 4, 2.0)
    assert [name for name, _ in resolved.named("augment")] == ["color", "translation"]
    assert resolved.architecture.width == 32 and not resolved.fits_density
    assert resolved.config.output_dir == str(workdir / "ganflow-runs")  # absolute


def test_an_augmentation_may_come_twice_and_a_regularizer_once(plugins, workdir):
    twice = resolve(configure(plugins, "toy", {"augment": ("translation:ratio=0.1",
                                                           "translation:ratio=0.2")}), plugins)
    assert [(name, c.values["ratio"]) for name, c in twice.named("augment")] == [
        ("translation", 0.1), ("translation", 0.2)]
    assert twice.params()["augment.translation.ratio"] == 0.2  # a param holds the last
    with pytest.raises(UsageError, match=r"^--regularizer: each regularizer may be given once, "
                                         r"got r1, r1$"):
        resolve(configure(plugins, "toy", {"regularizers": ("r1", "r1:gamma=2")}), plugins)


def test_params_and_providers_come_from_the_resolved_components(plugins, workdir):
    resolved = resolve(configure(plugins, "dcgan", {"loss": "wgan:gp=5",
                                                    "augment": ("cutout",)}), plugins)
    params = resolved.params()
    assert params["loss.gp"] == 5.0 and params["loss.sides"] == "two-sided"
    assert params["regularizer.r1.gamma"] == 1.0 and params["regularizer.r1.every"] == 1
    assert params["augment.cutout.ratio"] == 0.5
    assert params["g_optimizer.beta1"] == params["d_optimizer.beta1"] == 0.5
    assert resolved.providers() == {
        "ganflow.plugin.trainer": "ganflow_plugins.trainers",
        "ganflow.plugin.augment.cutout": "ganflow_plugins.augment",
        "ganflow.plugin.loss": "ganflow_plugins.losses",
        "ganflow.plugin.regularizer.r1": "ganflow_plugins.regularizers",
        "ganflow.plugin.g_optimizer": "ganflow_plugins.optimizers",
        "ganflow.plugin.d_optimizer": "ganflow_plugins.optimizers",
        "ganflow.plugin.lr_schedule": "ganflow_plugins.optimizers",
        "ganflow.plugin.dataset": "ganflow_plugins.datasets",
        "ganflow.plugin.arch": "ganflow_plugins.dcgan"}


def test_a_maximum_likelihood_run_names_only_what_it_uses(plugins, workdir):
    resolved = resolve(configure(plugins, "gmm-mle", {}), plugins)
    assert resolved.fits_density
    assert resolved.providers(exclude=GAN_ONLY) == {
        "ganflow.plugin.trainer": "ganflow_plugins.trainers",
        "ganflow.plugin.dataset": "ganflow_plugins.toy",
        "ganflow.plugin.arch": "ganflow_plugins.gmm"}
    assert resolved.params(exclude=GAN_ONLY) == {}


def test_the_result_is_immutable(plugins, workdir):
    resolved = resolve(configure(plugins, "toy", {}), plugins)
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.trainer = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.config.epochs = 3
    with pytest.raises(TypeError):
        resolved.components["loss"] = None
