"""The maximum-likelihood baseline as a run: fit P_G at once (a trainer's ``fit_density``, the
built-in ``mle`` on ``--arch gmm``), then log and register its sampler as a GAN run's
generator is, so the two compare in the same store.

Logs the mean log-likelihood of the training data and, when the data's density is known, of
fresh held-out samples under the fit and under P_data itself (the best possible).
"""

from __future__ import annotations

import time
from pathlib import Path

from ganflow import noise
from ganflow.prepare import data_params, load_source
from ganflow.resolve import Resolved

# Settings that only a trainer with networks uses: a maximum-likelihood run does not log them,
# nor the plugins they name.
GAN_ONLY = ("loss", "regularizers", "augment", "epochs", "batch_size", "d_steps",
            "latent_dim", "optimizer", "g_optimizer", "d_optimizer", "lr_g", "lr_d",
            "lr_schedule", "ema", "steps_per_epoch", "jit", "log_every",
            "steps_per_execution", "eval_every", "eval_samples", "features",
            "feature_weights")
HELDOUT_SIZE = 10_000


def run(resolved: Resolved, tracking_uri: str):
    """resolve (done) -> prepare: load the data and fit, before the MLflow run starts, so a
    fit that cannot be made leaves no failed run -> log the fit -> register its sampler."""
    import mlflow
    import numpy as np

    from ganflow import registry, tracking, views
    from ganflow.result import RunResult
    from ganflow.training import TrainingSetup

    config = resolved.config
    source = load_source(resolved)
    setup = TrainingSetup(
        spec=source.spec, source=source, architecture=resolved.architecture, loss=None,
        regularizers=[], latent_dim=config.latent_dim, d_steps=config.d_steps, seed=config.seed,
        ema=None, jit_compile=config.jit_compile, steps_per_epoch=0, epochs=config.epochs,
        names={"arch": config.arch, "dataset": config.dataset},
        architecture_entry=resolved.components["arch"].entry)
    started = time.perf_counter()
    fitted = resolved.components["trainer"].entry.call("to fit", resolved.trainer.fit_density,
                                                       setup)
    providers = {**resolved.providers(exclude=GAN_ONLY),
                 "ganflow.objective": "maximum-likelihood"}
    params = {**data_params(source), **resolved.params(exclude=GAN_ONLY)}
    with tracking.start_run(config, params, providers, exclude=GAN_ONLY) as active:
        run_id = active.info.run_id
        latent_dim = int(fitted.generator.input_shape[-1])
        mlflow.log_params({"latent_dim": latent_dim,
                           **{f"fit_{k}": v for k, v in fitted.info.items()}})
        train = np.stack(list(source.examples().as_numpy_iterator()))
        metrics = {"train_log_likelihood": float(np.mean(fitted.log_prob(train)))}
        if source.density is not None:
            heldout = source.density.sample(HELDOUT_SIZE, seed=noise.rng(config.seed, "heldout"))
            metrics["heldout_log_likelihood"] = float(np.mean(fitted.log_prob(heldout)))
            metrics["heldout_log_likelihood_data"] = float(np.mean(source.density.log_prob(heldout)))
        view = views.SampleView(source, latent_dim, config.samples, config.seed)
        samples_path, toy = view(fitted.generator,
                                 Path(config.output_dir) / run_id / "samples" / "fitted.png",
                                 "maximum likelihood")
        from PIL import Image

        with Image.open(samples_path) as picture:
            mlflow.log_image(picture, key="samples", step=0)
        metrics.update(toy)
        mlflow.log_metrics(metrics, step=0)
        registered = registry.register_generator(
            fitted.generator, latent_dim, source.spec.shape, run_id=run_id,
            name=config.model_name if config.register else None, recipe=config.recipe,
            made_by={"recipe": config.recipe, "objective": "maximum-likelihood",
                     "arch": config.arch, "dataset": config.dataset},
            trained="fitted at once", metrics=metrics)
    return RunResult.of(active, tracking_uri, registered=registered, samples_path=samples_path,
                        metrics=metrics, seconds=time.perf_counter() - started)
