"""run(config): plugins -> data -> model -> fit -> MLflow. Everything that can be checked is
checked before the MLflow run starts, so a mistake costs seconds and leaves no half-made run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganflow.config import RunConfig, load_config_file, resolve
from ganflow.errors import UsageError
from ganflow.plugins import Plugins
from ganflow.types import DatasetOptions

@dataclass
class RunResult:
    run_id: str
    experiment: str
    tracking_uri: str
    samples_path: Path
    model_uri: str
    model_name: str | None
    model_version: int | None
    seconds: float
    metrics: dict[str, float]
    interrupted: bool = False


def resolve_config(
    plugins: Plugins, recipe: str, config_file: str | None, flags: dict[str, Any]
) -> RunConfig:
    """Recipe defaults < config file < flags (None means "not given")."""
    defaults = plugins.recipes.get(recipe).obj
    layers = [(f"recipe {recipe}", {**defaults, "recipe": recipe})]
    if config_file:
        layers.append((f"--config {config_file}", load_config_file(config_file)))
    layers.append(("flags", flags))
    return resolve(*layers)


@dataclass
class Prepared:
    """Everything a run needs, built and checked, nothing yet started."""

    config: RunConfig
    source: Any
    gan: Any
    steps_per_epoch: int
    providers: dict[str, str]


def prepare(config: RunConfig, plugins: Plugins) -> Prepared:
    import keras

    from ganflow.data import batches_per_pass
    from ganflow.gan import GAN

    # Names first: a typo must not cost a dataset load.
    loss = plugins.losses.get(config.loss)
    arch = plugins.architectures.get(config.arch)
    dataset, argument = plugins.dataset(config.dataset)

    source = dataset.obj(DatasetOptions(argument, config.data_dir, config.image_size))
    spec = source.spec
    per_pass = batches_per_pass(spec.size, config.batch_size, config.d_steps)  # fits at all?
    steps_per_epoch = config.steps_per_epoch or per_pass

    keras.utils.set_random_seed(config.seed)
    generator = arch.obj.build_generator(spec, config.latent_dim)
    discriminator = arch.obj.build_discriminator(spec)
    _check_shapes(config, spec, generator, discriminator)

    gan = GAN(generator, discriminator, config.latent_dim, config.d_steps, seed=config.seed)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(config.lr_d, beta_1=config.beta1, beta_2=config.beta2),
        g_optimizer=keras.optimizers.Adam(config.lr_g, beta_1=config.beta1, beta_2=config.beta2),
        loss=loss.obj,
        jit_compile=config.jit_compile,
    )
    providers = {
        "ganflow.plugin.loss": loss.plugin,
        "ganflow.plugin.arch": arch.plugin,
        "ganflow.plugin.dataset": dataset.plugin,
    }
    return Prepared(config, source, gan, steps_per_epoch, providers)


def _check_shapes(config, spec, generator, discriminator) -> None:
    import numpy as np

    z = np.zeros((2, config.latent_dim), dtype=np.float32)
    made = tuple(generator(z, training=False).shape[1:])
    if made != tuple(spec.shape):
        raise UsageError(
            f"architecture {config.arch}'s generator makes examples of shape {made}, but "
            f"dataset {config.dataset} has examples of shape {tuple(spec.shape)}"
        )
    scored = tuple(discriminator(np.zeros((2, *spec.shape), np.float32), training=False).shape[1:])
    if scored != (1,):
        raise UsageError(
            f"architecture {config.arch}'s discriminator outputs shape {scored} per example; "
            "it must output (1,): one logit"
        )


def run(config: RunConfig, plugins: Plugins, verbose: int = 1) -> RunResult:
    """Train, track and register; Ctrl-C stops training and still logs the generator."""
    import mlflow
    import numpy as np

    from ganflow import tracking
    from ganflow.data import training_pipeline

    prepared = prepare(config, plugins)
    gan, source = prepared.gan, prepared.source
    tracking_uri = tracking.use_tracking_uri(config.tracking_uri)
    extra_params = {
        "data_shape": "x".join(map(str, source.spec.shape)),
        "data_size": source.spec.size,
        **{f"data_{k}": v for k, v in source.info.items()},
    }
    started = time.perf_counter()
    with tracking.start_run(config, extra_params, prepared.providers) as active:
        run_id = active.info.run_id
        noise = np.random.default_rng(config.seed).standard_normal(
            (config.samples, config.latent_dim)
        ).astype(np.float32)
        logger = tracking.MlflowLogger(
            config.log_every,
            prepared.steps_per_epoch,
            Path(config.output_dir) / run_id / "samples",
            noise,
        )
        pipeline = training_pipeline(source, config.batch_size, config.d_steps, config.seed)
        interrupted = False
        try:
            history = gan.fit(
                pipeline,
                epochs=config.epochs,
                steps_per_epoch=prepared.steps_per_epoch,
                callbacks=[logger],
                shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
                verbose=verbose,
            )
            metrics = {k: float(v[-1]) for k, v in history.history.items()}
        except KeyboardInterrupt:
            interrupted = True
            metrics = {}
        model_name = None if interrupted or not config.register else config.model_name
        tags = {"loss": config.loss, "dataset": config.dataset, "run_id": run_id}
        model_uri, version = tracking.log_generator(
            gan.generator, config.latent_dim, model_name, tags
        )
        if interrupted:
            mlflow.set_tag("ganflow.interrupted", "true")
            mlflow.end_run(status="KILLED")
    return RunResult(
        run_id=run_id,
        experiment=mlflow.get_experiment(active.info.experiment_id).name,
        tracking_uri=tracking_uri,
        samples_path=logger.last_grid,
        model_uri=model_uri,
        model_name=model_name,
        model_version=version,
        seconds=time.perf_counter() - started,
        metrics=metrics,
        interrupted=interrupted,
    )
