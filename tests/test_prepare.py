"""The second step of a run: data, model and evaluator built and checked, into one immutable
record, before any MLflow run exists."""

import dataclasses

import mlflow
import pytest

from ganflow.prepare import prepare
from ganflow.resolve import configure, resolve


def test_a_run_is_prepared_whole_before_anything_is_tracked(plugins, workdir):
    prepared = prepare(resolve(configure(plugins, "dcgan", {
        "batch_size": 16, "d_steps": 2, "eval_every": 0, "precision": "float32"}), plugins))
    assert prepared.per_step == 32 and prepared.steps_per_epoch == 1797 // 32
    assert prepared.chief and prepared.worker is None and prepared.evaluator is None
    assert prepared.gan.d_steps == 2 and prepared.gan.latent_dim == 64
    params = prepared.params()
    assert (params["data_size"], params["data_shape"], params["replicas"],
            params["dtype_policy"]) == (1797, "32x32x1", 1, "float32")
    assert params["regularizer.r1.gamma"] == 1.0  # every plugin setting too
    assert prepared.providers == prepared.resolved.providers()
    assert mlflow.search_experiments(filter_string="name = 'ganflow'") == []  # nothing tracked
    with pytest.raises(dataclasses.FrozenInstanceError):
        prepared.steps_per_epoch = 1


def test_the_evaluator_is_built_before_the_run_and_names_its_extractor(plugins, workdir):
    prepared = prepare(resolve(configure(plugins, "toy", {
        "eval_every": 1, "eval_samples": 100}), plugins))
    assert prepared.evaluator.features == "raw"  # the default on points
    assert prepared.providers["ganflow.plugin.features"] == "ganflow_plugins.features"
    assert prepared.params()["eval_features"] == "raw"


def test_a_trainer_s_own_step_sizes_the_epochs(plugins, workdir):
    # RaGAN's generator update reads real data: m more real examples a step.
    from test_step import RelativisticAverage

    class Trainer:
        def build(self, setup):
            import ganflow

            setup = dataclasses.replace(setup, loss=RelativisticAverage())
            return ganflow.GAN.from_setup(setup)

    resolved = resolve(configure(plugins, "dcgan", {"batch_size": 16, "eval_every": 0}),
                       plugins)
    prepared = prepare(dataclasses.replace(resolved, trainer=Trainer()))
    assert prepared.per_step == 32 and prepared.steps_per_epoch == 1797 // 32
