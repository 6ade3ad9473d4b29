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
    champion: object = None  # a tracking.Champion when the version was evaluated


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
    evaluator: Any = None  # an evaluation.Evaluator with --eval-every


def prepare(config: RunConfig, plugins: Plugins, eval_optional: bool = False) -> Prepared:
    """Build and check everything a run needs.

    With ``eval_optional`` (the recipe, not the user, asked for ``--eval-every``), images
    without labels are not evaluated, with a line on stderr that says so: their default
    features, InceptionV3's, would download weights and take a quarter of an hour per
    evaluation on a CPU.
    """
    import keras

    from ganflow import evaluation
    from ganflow.data import batches_per_pass
    from ganflow.gan import GAN

    # Names first: a typo must not cost a dataset load.
    loss = plugins.losses.get(config.loss)
    arch, architecture = plugins.architecture(config.arch)
    dataset, argument = plugins.dataset(config.dataset)
    if config.features:
        plugins.features.get(config.features)

    source = dataset.obj(DatasetOptions(argument, config.data_dir, config.image_size))
    spec = source.spec
    per_pass = batches_per_pass(spec.size, config.batch_size, config.d_steps)  # fits at all?
    steps_per_epoch = config.steps_per_epoch or per_pass

    keras.utils.set_random_seed(config.seed)
    generator = architecture.build_generator(spec, config.latent_dim)
    discriminator = architecture.build_discriminator(spec)
    _check_shapes(config, spec, generator, discriminator)

    gan = GAN(generator, discriminator, config.latent_dim, config.d_steps, seed=config.seed,
              ema=config.ema)
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
    evaluator = None
    inception_by_default = not config.features and evaluation.default_features(source) == "inception"
    if config.eval_every and eval_optional and inception_by_default:
        evaluation.log_to_stderr(
            f"Not evaluating: {config.dataset} has no labels for the domain classifier; pass "
            "--eval-every N --features inception to evaluate with InceptionV3")
    elif config.eval_every:
        # Before the run starts: missing weights or unlabelled data must cost seconds.
        evaluator = evaluation.build(plugins, source, config.dataset, config.features,
                                     config.feature_weights, config.eval_samples, config.seed)
        providers["ganflow.plugin.features"] = plugins.features.get(evaluator.features).plugin
    return Prepared(config, source, gan, steps_per_epoch, providers, evaluator)


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


def _data_params(source) -> dict[str, Any]:
    return {
        "data_shape": "x".join(map(str, source.spec.shape)),
        "data_size": source.spec.size,
        **{f"data_{k}": v for k, v in source.info.items()},
    }


def run(config: RunConfig, plugins: Plugins, verbose: int = 1, report=None,
        eval_optional: bool = False) -> RunResult:
    """Train, track and register; Ctrl-C stops training and still logs the generator.

    An architecture with ``fit`` (maximum likelihood) is fitted instead of trained as a GAN.
    With ``--eval-every``, the registered version is tagged with its metrics and becomes the
    ``champion`` if its FID is the best; ``report`` receives a line per evaluation.
    ``eval_optional``: see ``prepare``.
    """
    import mlflow
    import numpy as np

    from ganflow import tracking
    from ganflow.data import training_pipeline

    arch, architecture = plugins.architecture(config.arch)
    if callable(getattr(architecture, "fit", None)):
        return run_maximum_likelihood(config, plugins, arch, architecture)
    prepared = prepare(config, plugins, eval_optional)
    gan, source = prepared.gan, prepared.source
    tracking_uri = tracking.use_tracking_uri(config.tracking_uri)
    extra_params = _data_params(source)
    if prepared.evaluator is not None:
        extra_params.update(prepared.evaluator.params)
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
            tracking.SampleView(source, noise, config.seed),
        )
        callbacks = [logger]
        if prepared.evaluator is not None:
            from ganflow import evaluation

            eval_noise = evaluation.noise(config.eval_samples, config.latent_dim, config.seed)
            evaluations = tracking.EvaluationLogger(prepared.evaluator, config.eval_every,
                                                    prepared.steps_per_epoch, eval_noise, report)
            callbacks.append(evaluations)
        pipeline = training_pipeline(source, config.batch_size, config.d_steps, config.seed)
        interrupted = False
        try:
            history = gan.fit(
                pipeline,
                epochs=config.epochs,
                steps_per_epoch=prepared.steps_per_epoch,
                callbacks=callbacks,
                shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
                verbose=verbose,
            )
            metrics = {k: float(v[-1]) for k, v in history.history.items()}
            metrics.update(logger.last_view_metrics)
            if prepared.evaluator is not None:
                metrics.update(evaluations.last)
        except KeyboardInterrupt:
            interrupted = True
            metrics = {}
        model_name = None if interrupted or not config.register else config.model_name
        tags = {"loss": config.loss, "dataset": config.dataset, "run_id": run_id}
        if config.ema is not None:
            tags["ema"] = str(config.ema)
        evaluated = prepared.evaluator is not None and "eval/fid" in metrics
        if evaluated:
            tags.update(eval_dataset=config.dataset, eval_samples=str(config.eval_samples))
        tags.update(tracking.version_tags(
            metrics, prepared.evaluator.params if evaluated else None))
        model_uri, version = tracking.log_generator(
            gan.sampling_generator, config.latent_dim, model_name, tags
        )
        champion = None
        if version is not None and evaluated:
            champion = tracking.promote_champion(model_name, version)
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
        champion=champion,
    )


# Settings that only a GAN uses: a maximum-likelihood run does not log them.
GAN_ONLY = ("loss", "epochs", "batch_size", "d_steps", "latent_dim", "lr_g", "lr_d", "beta1",
            "beta2", "ema", "steps_per_epoch", "jit", "log_every", "eval_every", "eval_samples",
            "features", "feature_weights")
HELDOUT_SIZE = 10_000


def run_maximum_likelihood(config: RunConfig, plugins: Plugins, arch, architecture) -> RunResult:
    """Fit P_G by maximum likelihood, log the fit like a GAN run, register its sampler.

    Logs the mean log-likelihood of the training data and, when the data's density is known,
    of fresh held-out samples under the fit and under P_data itself (the best possible).
    """
    import mlflow
    import numpy as np

    from ganflow import tracking

    dataset, argument = plugins.dataset(config.dataset)
    source = dataset.obj(DatasetOptions(argument, config.data_dir, config.image_size))
    tracking_uri = tracking.use_tracking_uri(config.tracking_uri)
    providers = {"ganflow.plugin.arch": arch.plugin, "ganflow.plugin.dataset": dataset.plugin,
                 "ganflow.objective": "maximum-likelihood"}
    started = time.perf_counter()
    with tracking.start_run(config, _data_params(source), providers, exclude=GAN_ONLY) as active:
        run_id = active.info.run_id
        fitted = architecture.fit(source, config.seed)
        latent_dim = int(fitted.generator.input_shape[-1])
        mlflow.log_params({"latent_dim": latent_dim,
                           **{f"fit_{k}": v for k, v in fitted.info.items()}})
        train = np.stack(list(source.examples().as_numpy_iterator()))
        metrics = {"train_log_likelihood": float(np.mean(fitted.log_prob(train)))}
        if source.density is not None:
            heldout = source.density.sample(HELDOUT_SIZE, seed=config.seed + 1)
            metrics["heldout_log_likelihood"] = float(np.mean(fitted.log_prob(heldout)))
            metrics["heldout_log_likelihood_data"] = float(np.mean(source.density.log_prob(heldout)))
        noise = np.random.default_rng(config.seed).standard_normal(
            (config.samples, latent_dim)).astype(np.float32)
        view = tracking.SampleView(source, noise, config.seed)
        samples_path, toy = view(fitted.generator,
                                 Path(config.output_dir) / run_id / "samples" / "fitted.png",
                                 "maximum likelihood")
        mlflow.log_artifact(str(samples_path), artifact_path="samples")
        metrics.update(toy)
        mlflow.log_metrics(metrics, step=0)
        model_name = config.model_name if config.register else None
        tags = {"objective": "maximum-likelihood", "dataset": config.dataset, "run_id": run_id}
        model_uri, version = tracking.log_generator(fitted.generator, latent_dim, model_name, tags)
    return RunResult(
        run_id=run_id,
        experiment=mlflow.get_experiment(active.info.experiment_id).name,
        tracking_uri=tracking_uri,
        samples_path=samples_path,
        model_uri=model_uri,
        model_name=model_name,
        model_version=version,
        seconds=time.perf_counter() - started,
        metrics=metrics,
    )
