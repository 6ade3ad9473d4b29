"""run(config): plugins -> data -> model -> fit -> MLflow. Everything that can be checked is
checked before the MLflow run starts, so a mistake costs seconds and leaves no half-made run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ganflow import noise
from ganflow.config import CHOICES, RunConfig, load_config_file, recipe_layer, resolve
from ganflow.errors import PluginError, UsageError
from ganflow.outbox import Outbox, TrackingUnavailable, retry
from ganflow.plugins import Component, Entry, Plugins
from ganflow.step import DISCRIMINATOR, GENERATOR, Regularization, as_step_loss
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
    champion: object = None  # a registry.Champion when the version was evaluated
    steps_done: int | None = None  # training steps done, when it trained
    checkpoint: Path | None = None  # the newest checkpoint
    experiment_id: str = ""
    worker: object = None  # a devices.Worker that is not the chief: it trained, logged nothing


def resume_config(run_id: str, changes: dict[str, Any]) -> tuple[RunConfig, bool]:
    """The settings ``run_id`` was started with, with ``changes`` (None: unchanged), and
    whether it evaluated. A run that finished needs more ``epochs``; one whose process still
    runs cannot be resumed."""
    import json

    import mlflow

    from ganflow import tracking

    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UsageError(f"no run {run_id} in {mlflow.get_tracking_uri()}: pass the run id "
                         "ganflow run printed, and its --tracking-uri") from None
    text = run.data.tags.get("ganflow.config")
    if not text:
        raise UsageError(f"run {run_id} was not made by `ganflow run` (it has no ganflow.config "
                         "tag): it cannot be resumed")
    values = json.loads(text)
    from ganflow.devices import worker

    role = worker(values.get("strategy", "default"))
    chief = role is None or role.chief  # a worker resumes with its chief, which reopens the run
    if chief and run.info.status == "RUNNING" and tracking.process_alive(run.data.tags):
        raise UsageError(f"run {run_id} is still running (process {run.data.tags.get('ganflow.pid')}"
                         f" on {run.data.tags.get('ganflow.host')}): stop it first")
    # It computes as it did: `--precision auto` stays the policy it picked when the run
    # started (param dtype_policy), though this machine, or a worker, might pick another.
    policy = run.data.params.get("dtype_policy")
    if values.get("precision") == "auto" and policy in CHOICES["precision"]:
        values["precision"] = policy
    before = values["epochs"]
    values.update({k: v for k, v in changes.items() if v is not None})
    if run.info.status == "FINISHED" and values["epochs"] <= before:
        raise UsageError(f"run {run_id} finished its {before} epochs: to train it longer, pass "
                         f"--epochs N with N > {before}")
    return resolve((f"run {run_id}", values)), "eval_features" in run.data.params


def resolve_config(
    plugins: Plugins, recipe: str, config_file: str | None, flags: dict[str, Any]
) -> RunConfig:
    """Recipe defaults < config file < flags (None means "not given")."""
    layers = [recipe_layer(recipe, plugins.recipes.get(recipe).obj)]
    if config_file:
        layers.append((f"--config {config_file}", load_config_file(config_file)))
    layers.append(("flags", flags))
    return resolve(*layers)


@dataclass
class Resolved:
    """A run's plugins, looked up by name with their settings checked; nothing built yet."""

    trainer: Component
    loss: Component
    regularizers: list[tuple[Component, int]]  # (regularizer, every)
    augmentations: list[Component]
    optimizers: dict[str, Component]  # by network
    schedule: Component
    arch: Entry
    architecture: Any
    dataset: Entry
    dataset_argument: str | None
    features: Entry | None = None

    @cached_property
    def trainer_object(self):
        return self.trainer.build()

    @cached_property
    def loss_object(self):
        return _built(self.loss)

    @cached_property
    def regularizations(self) -> list[Regularization]:
        return [Regularization(component.name, _built(component), every)
                for component, every in self.regularizers]

    @cached_property
    def augment(self):
        """The ``--augment`` chain as one function (x, seed_generator) -> x, or None."""
        if not self.augmentations:
            return None
        steps = [component.build() for component in self.augmentations]

        def augment(x, seed_generator):
            for step in steps:
                x = step(x, seed_generator)
            return x

        return augment

    @property
    def fits_density(self) -> bool:
        return callable(getattr(self.trainer_object, "fit_density", None))

    def params(self) -> dict[str, Any]:
        """Every plugin setting, defaults included, as MLflow params."""
        out = {**self.trainer.params("trainer"), **self.loss.params("loss"),
               **self.schedule.params("lr_schedule")}
        for network, component in self.optimizers.items():
            out.update(component.params(f"{network[0]}_optimizer"))
        for component, every in self.regularizers:
            out.update(component.params(f"regularizer.{component.name}"))
            out[f"regularizer.{component.name}.every"] = every
        for component in self.augmentations:
            out.update(component.params(f"augment.{component.name}"))
        return out

    def providers(self) -> dict[str, str]:
        """Which plugin provided each named thing, as run tags."""
        tags = {"ganflow.plugin.trainer": self.trainer.entry.plugin,
                "ganflow.plugin.loss": self.loss.entry.plugin,
                "ganflow.plugin.arch": self.arch.plugin,
                "ganflow.plugin.dataset": self.dataset.plugin}
        for component, _ in self.regularizers:
            tags[f"ganflow.plugin.regularizer.{component.name}"] = component.entry.plugin
        for component in self.augmentations:
            tags[f"ganflow.plugin.augment.{component.name}"] = component.entry.plugin
        if self.features is not None:
            tags["ganflow.plugin.features"] = self.features.plugin
        return tags


def resolve_plugins(config: RunConfig, plugins: Plugins) -> Resolved:
    """Look up every name of the run and check every setting: a typo must not cost a
    dataset load."""
    regularizers = [plugins.regularizer(spec) for spec in config.regularizers]
    names = [component.name for component, _ in regularizers]
    if len(set(names)) != len(names):
        raise UsageError(f"--regularizer: each regularizer may be given once, got "
                         f"{', '.join(names)}")
    optimizers = {
        GENERATOR: plugins.component(plugins.optimizers, config.g_optimizer or config.optimizer,
                                     "--g-optimizer" if config.g_optimizer else "--optimizer"),
        DISCRIMINATOR: plugins.component(plugins.optimizers,
                                         config.d_optimizer or config.optimizer,
                                         "--d-optimizer" if config.d_optimizer else "--optimizer"),
    }
    augmentations = [plugins.component(plugins.augmentations, spec, "--augment")
                     for spec in config.augment]
    resolved = Resolved(
        trainer=plugins.component(plugins.trainers, config.trainer, "--trainer"),
        loss=plugins.component(plugins.losses, config.loss, "--loss"),
        regularizers=regularizers,
        augmentations=augmentations,
        optimizers=optimizers,
        schedule=plugins.component(plugins.schedules, config.lr_schedule, "--lr-schedule"),
        arch=None, architecture=None, dataset=None, dataset_argument=None,
    )
    resolved.arch, resolved.architecture = plugins.architecture(config.arch)
    resolved.dataset, resolved.dataset_argument = plugins.dataset(config.dataset)
    if config.features:
        resolved.features = plugins.features.get(config.features)
    return resolved


@dataclass
class Prepared:
    """Everything a run needs, built and checked, nothing yet started."""

    config: RunConfig
    resolved: Resolved
    source: Any
    gan: Any
    steps_per_epoch: int
    per_step: int
    evaluator: Any = None  # an evaluation.Evaluator with --eval-every

    @property
    def providers(self) -> dict[str, str]:
        return self.resolved.providers()


def load_source(config: RunConfig, resolved: Resolved):
    """The dataset plugin's source; its failures name the plugin."""
    options = DatasetOptions(resolved.dataset_argument, config.data_dir, config.image_size)
    return resolved.dataset.call("to load", resolved.dataset.obj, options)


def setup_for(config: RunConfig, resolved: Resolved, source):
    """The ``ganflow.TrainingSetup`` a trainer receives (its ``steps_per_epoch`` still to be
    set: it depends on how many real examples a step takes)."""
    from ganflow.training import TrainingSetup

    def make_optimizer(network: str, total_updates: int):
        rate = config.lr_g if network == GENERATOR else config.lr_d
        schedule = resolved.schedule.build(rate, total_updates)
        return resolved.optimizers[network].build(schedule)

    return TrainingSetup(
        spec=source.spec, source=source, architecture=resolved.architecture,
        loss=resolved.loss_object, regularizers=resolved.regularizations,
        latent_dim=config.latent_dim,
        d_steps=config.d_steps, seed=config.seed, ema=config.ema,
        jit_compile=config.jit_compile, steps_per_epoch=0, epochs=config.epochs,
        make_optimizer=make_optimizer, names={"arch": config.arch, "dataset": config.dataset},
        conditional=config.conditional, architecture_entry=resolved.arch,
        augment=resolved.augment,
    )


def _built(component: Component):
    """A loss or regularizer object, checked for its contract (a factory's product is only
    known once built)."""
    obj = component.build()
    try:
        if component.entry.kind == "loss":
            as_step_loss(obj)
        else:
            from ganflow.step import check_regularizer

            check_regularizer(obj)
    except PluginError as exc:
        raise PluginError(f"plugin {component.entry.plugin}: {component.entry.kind} "
                          f"{component.name!r}: {exc}") from None
    return obj


def prepare(config: RunConfig, plugins: Plugins, eval_optional: bool = False,
            resolved: Resolved | None = None) -> Prepared:
    """Build and check everything a run needs (``resolved``: the run's plugins, if looked up
    already).

    With ``eval_optional`` (the recipe, not the user, asked for ``--eval-every``), images
    without labels are not evaluated, with a line on stderr that says so: their default
    features, InceptionV3's, would download weights and take a quarter of an hour per
    evaluation on a CPU.
    """
    import keras

    from ganflow import devices, evaluation
    from ganflow.data import batches_per_pass
    from ganflow.gan import GAN

    resolved = resolved or resolve_plugins(config, plugins)
    # First: --cpu-devices splits the CPU only before TensorFlow has run anything.
    strategy = devices.make_strategy(config.strategy, config.cpu_devices)
    _check_distribution(config, strategy.num_replicas_in_sync)
    trainer = resolved.trainer_object
    if not callable(getattr(trainer, "build", None)):
        raise UsageError(f"trainer {resolved.trainer.name} fits a density at once: "
                         "runner.run fits it, prepare has nothing to build")
    source = load_source(config, resolved)
    if config.conditional and not (source.labelled and source.spec.num_classes):
        raise UsageError(f"--conditional needs labelled data, and {config.dataset} has no "
                         "labels: drop --conditional, or use a labelled dataset")
    setup = setup_for(config, resolved, source)
    # Steps per pass as the default step consumes data: the schedules' lengths depend on it.
    per_step = config.batch_size * (
        config.d_steps + int(GAN.reads_real(setup.loss, setup.regularizers)))
    per_pass = batches_per_pass(source.spec.size, config.batch_size, per_step)  # fits at all?
    setup.steps_per_epoch = config.steps_per_epoch or per_pass

    keras.utils.set_random_seed(config.seed)
    # Networks, EMA copy and optimizers are made in the strategy's scope (mirrored on every
    # replica) and with the run's dtype policy.
    with strategy.scope(), devices.dtype_policy(devices.resolve_precision(config.precision)):
        gan = _build_model(resolved, trainer, setup)
    if not isinstance(gan, GAN):
        raise PluginError(f"plugin {resolved.trainer.entry.plugin}: trainer "
                          f"{resolved.trainer.name!r} built a {type(gan).__name__}; build(setup) "
                          "must return a compiled ganflow.GAN (or subclass)")
    steps_per_epoch = setup.steps_per_epoch
    if gan.real_per_step(config.batch_size) != per_step:  # a trainer's own step
        per_step = gan.real_per_step(config.batch_size)
        per_pass = batches_per_pass(source.spec.size, config.batch_size, per_step)
        if not config.steps_per_epoch and resolved.schedule.name != "constant":
            raise PluginError(
                f"plugin {resolved.trainer.entry.plugin}: trainer {resolved.trainer.name!r} "
                f"takes {per_step} real examples per step where its loss and k ask for "
                f"{config.batch_size * (config.d_steps + int(gan.generator_uses_real))}: "
                "the learning-rate schedule would not span the run; pass --steps-per-epoch")
        steps_per_epoch = config.steps_per_epoch or per_pass
    steps_per_call(config, steps_per_epoch, 0)  # a --steps-per-execution that cannot fit: now

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
        resolved.features = plugins.features.get(evaluator.features)
    return Prepared(config, resolved, source, gan, steps_per_epoch, per_step, evaluator)


def _check_distribution(config: RunConfig, replicas: int) -> None:
    """What a strategy cannot do with these settings, before anything is built."""
    if config.batch_size % replicas:
        raise UsageError(f"--batch-size {config.batch_size} does not split evenly between "
                         f"{replicas} replicas: use a multiple of {replicas}")
    if replicas > 1 and config.jit == "on":
        import tensorflow as tf

        if not tf.config.list_logical_devices("GPU"):
            # TensorFlow's XLA cannot do it on CPUs. Mirrored over logical CPU devices: the
            # replicas' noise-generator state lives on another device, which a compiled step
            # cannot read (InvalidArgumentError "Trying to access resource ... located in
            # device"). Multiworker, one CPU per worker: "Collectives are not yet implemented
            # for CPU devices when compiling with XLA" (b/194942685), and the workers then
            # abort ("double free or corruption"), measured November 2026.
            raise UsageError(f"--jit on with --strategy {config.strategy} works on GPUs, not on "
                             "CPU devices: use --jit off (or auto)")


def _build_model(resolved: Resolved, trainer, setup):
    """``trainer.build(setup)``; a loss or regularizer that fails its check before training
    is named with its plugin."""
    from ganflow.gan import StepCheckError

    try:
        return resolved.trainer.entry.call("to build the model", trainer.build, setup)
    except StepCheckError as exc:
        culprits = [(resolved.loss, resolved.loss_object)] + [
            (component, use.regularizer)
            for (component, _), use in zip(resolved.regularizers, resolved.regularizations)]
        for component, obj in culprits:
            if exc.component is obj:
                raise PluginError(f"plugin {component.entry.plugin}: {component.entry.kind} "
                                  f"{component.name!r}: {exc}") from exc
        raise


def _data_params(source) -> dict[str, Any]:
    return {
        "data_shape": "x".join(map(str, source.spec.shape)),
        "data_size": source.spec.size,
        **{f"data_{k}": v for k, v in source.info.items()},
    }


def run(config: RunConfig, plugins: Plugins, verbose: int = 1, report=None,
        eval_optional: bool = False, resume_run_id: str | None = None) -> RunResult:
    """Train, track and register (see ``_run``); a resume holds its run's lock throughout.

    Under ``--strategy multiworker`` only the chief does all that; the other workers train in
    step with it and keep nothing (``_train_as_worker``)."""
    from contextlib import nullcontext

    from ganflow import devices

    role = devices.worker(config.strategy)  # TF_CONFIG checked before anything starts
    if role is not None and not role.chief:
        return _train_as_worker(config, plugins, verbose, role, resume_run_id)
    lock = nullcontext() if not resume_run_id else _hold(
        Path(config.output_dir).expanduser().resolve() / resume_run_id / ".resume.lock",
        resume_run_id)
    with lock:
        return _run(config, plugins, verbose, report, eval_optional, resume_run_id)


def _run(config: RunConfig, plugins: Plugins, verbose: int = 1, report=None,
         eval_optional: bool = False, resume_run_id: str | None = None) -> RunResult:
    """Train, track and register, checkpointing as it goes.

    A trainer that fits a density (``mle``) fits it instead of training a GAN. With
    ``--eval-every``, the registered version is tagged with its metrics and becomes the
    ``champion`` if its FID is the best; ``report`` receives a line per evaluation.
    ``eval_optional``: see ``prepare``. ``resume_run_id``: continue that MLflow run from its
    newest checkpoint (``ganflow resume``).

    Ctrl-C or SIGTERM saves a checkpoint, logs the generator (not registered) and marks the
    run KILLED. Losses or weights that stop being finite end the run FAILED, with nothing
    registered and the last good checkpoint kept.
    """
    import mlflow

    from ganflow import callbacks, checkpoints, devices, signals, tracking, views
    from ganflow.data import training_pipeline

    resolved = resolve_plugins(config, plugins)
    # The store and the output folder first: a mistake there must not cost a dataset load.
    # The folder is kept absolute, so `ganflow resume` finds the checkpoints from anywhere.
    tracking.check_writable(Path(config.output_dir), "--output-dir")
    config = replace(config, output_dir=str(Path(config.output_dir).expanduser().resolve()))
    output = Path(config.output_dir)
    tracking_uri = tracking.use_tracking_uri(config.tracking_uri)
    if resolved.fits_density:
        return run_maximum_likelihood(config, resolved, tracking_uri)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    prepared = prepare(config, plugins, eval_optional, resolved)
    gan, source = prepared.gan, prepared.source
    extra_params = {**_data_params(source), **prepared.resolved.params(),
                    "replicas": gan.distribute_strategy.num_replicas_in_sync,
                    "dtype_policy": gan.generator.dtype_policy.name}
    if prepared.evaluator is not None:
        extra_params.update(prepared.evaluator.params)
    started = time.perf_counter()
    done = 0
    if resume_run_id:  # before the run reopens: a checkpoint that cannot be read changes nothing
        store, done = _restore(gan, config, resolved, resume_run_id)
    with tracking.start_run(config, extra_params, prepared.providers,
                            resume_run_id) as active:
        run_id = active.info.run_id
        if not resume_run_id:
            store = checkpoints.Checkpoints(gan, output / run_id / "checkpoints",
                                            config.keep_checkpoints)
        pending = output / run_id / PENDING
        if resume_run_id:
            mlflow.set_tag("ganflow.resumed_from_step", str(done))
            Outbox.deliver(pending, run_id)  # what the store missed before the run stopped
        logged = tracking.last_logged_step(run_id) if resume_run_id else -1
        outbox = Outbox(run_id)
        if config.checkpoint_to_mlflow:
            store.on_save = lambda path: outbox.log_checkpoint(
                checkpoints.staged(path, output / run_id / "to-mlflow"), config.keep_checkpoints)
        logger = callbacks.MlflowLogger(
            outbox, config.log_every, prepared.steps_per_epoch, output / run_id / "samples",
            views.SampleView(source, config.latent_dim, config.samples, config.seed,
                             gan.num_classes if gan.conditional else None),
            logged_until=logged,
            resume_metrics=store.restored_metrics if done % prepared.steps_per_epoch else None)
        guard = callbacks.DivergenceGuard()
        watch = callbacks.TrackingWatch(outbox, config.tracking_timeout)
        saver = checkpoints.CheckpointCallback(
            store, prepared.steps_per_epoch if config.checkpoint_every is None
            else config.checkpoint_every, prepared.steps_per_epoch)
        # The guard first (a diverged step is not logged), the watch after the logger (the
        # step it stops at is).
        fit_callbacks = [guard, logger, watch]
        if prepared.evaluator is not None:
            evaluations = callbacks.EvaluationLogger(
                outbox, prepared.evaluator, config.eval_every, prepared.steps_per_epoch,
                noise.latent(config.eval_samples, config.latent_dim, config.seed, "eval"), report,
                prepared.evaluator.labels(config.eval_samples, config.seed)
                if gan.conditional else None, logged_until=logged, epochs=config.epochs)
            fit_callbacks.append(evaluations)
        fit_callbacks.append(saver)
        interrupted = None
        metrics = {}
        single_process = config.strategy != "multiworker"  # no other process to wait for
        try:
            with signals.terminate_as_interrupt():
                history = _fit_from(gan, lambda skip: training_pipeline(
                    source, prepared.per_step, config.seed).skip(skip), done,
                    prepared.steps_per_epoch, config.epochs, fit_callbacks, verbose,
                    lambda at: steps_per_call(config, prepared.steps_per_epoch, at))
            if history is not None:
                metrics = {k: float(v[-1]) for k, v in history.history.items()}
            metrics.update(logger.last_view_metrics)
            if prepared.evaluator is not None:
                metrics.update(evaluations.last)
        except KeyboardInterrupt as exc:
            interrupted = signals.name_of(exc)
            if single_process:  # else reading the metrics would wait for workers that go on
                logger.catch_up()  # a step may be done whose callbacks were cut short
        except devices.lost_peer_errors() as exc:
            if config.strategy != "multiworker":
                raise
            outbox.close()
            lost = devices.WorkerLost.during(exc, store, run_id)
            mlflow.set_tags({"ganflow.failure": str(lost),
                             "ganflow.failed_at_step": str(store.steps_done)})
            mlflow.end_run(status="FAILED")
            raise lost from None
        except checkpoints.CheckpointWriteError as exc:
            outbox.close()
            mlflow.set_tags({"ganflow.failure": str(exc),
                             "ganflow.failed_at_step": str(store.steps_done)})
            raise
        except BaseException:
            outbox.close()  # what was logged before the crash still reaches the store
            raise
        diverged = guard.diverged or saver.diverged
        # A chief stopped alone cannot save: a checkpoint's metric reads wait for every worker.
        stopped_alone = interrupted and not single_process
        last_checkpoint = saver.save() if diverged is None and not stopped_alone else \
            (Path(store.manager.latest_checkpoint) if store.manager.latest_checkpoint else None)
        diverged = diverged or saver.diverged  # the weights, checked as the last one is saved
        grids = sorted((output / run_id / "samples").glob("epoch_*.png"))  # a resume's too
        if diverged is None and len(grids) > 1:
            from ganflow.images import animate

            outbox.log_artifact(animate(grids, output / run_id / "samples.gif"))
        # Stopped by the user: what the store has not taken yet is saved, not waited for.
        patience = min(config.tracking_timeout, 10.0) if interrupted else config.tracking_timeout
        try:
            if watch.lost is not None or not outbox.flush(patience):
                raise TrackingUnavailable(
                    f"the tracking store did not answer for {outbox.down_for():.0f} s")
            outbox.close()
            if diverged is not None:
                _fail_diverged(diverged, store, run_id,
                               guard.span if diverged is guard.diverged else 1)  # raises
            model_name, model_uri, version, champion = retry(
                lambda: _log_model(config, gan, run_id, metrics, prepared, interrupted),
                "logging the generator", outbox, config.tracking_timeout)
            if interrupted:
                retry(lambda: mlflow.set_tags({"ganflow.interrupted": interrupted,
                                               "ganflow.stopped_at_step": str(store.steps_done)}),
                      "tagging the run", outbox, config.tracking_timeout)
                mlflow.end_run(status="KILLED")
        except TrackingUnavailable as exc:
            _stop_unreachable(exc, outbox, pending, store, run_id, tracking_uri)  # raises
    return RunResult(
        run_id=run_id,
        experiment=mlflow.get_experiment(active.info.experiment_id).name,
        experiment_id=active.info.experiment_id,
        tracking_uri=tracking_uri,
        samples_path=logger.last_grid,
        model_uri=model_uri,
        model_name=model_name,
        model_version=version,
        seconds=time.perf_counter() - started,
        metrics=metrics,
        interrupted=bool(interrupted),
        champion=champion,
        steps_done=store.steps_done,
        checkpoint=last_checkpoint,
    )


def _train_as_worker(config: RunConfig, plugins: Plugins, verbose: int, role,
                     resume_run_id: str | None) -> RunResult:
    """A worker of ``--strategy multiworker`` that is not the chief: it trains in step with
    the chief and keeps nothing.

    It runs every collective operation the chief runs, at the same steps: the metric reads of
    each logging window and each checkpoint's save (both read the replicas' metric sums).
    Its checkpoints go to a scratch folder removed at the end (TensorFlow's multi-worker
    guide); its metrics, pictures and model go nowhere; it does not evaluate. Resumed, it
    restores the chief's newest checkpoint: from the run's folder when this machine sees it,
    else from the run's MLflow artifacts (``--checkpoint-to-mlflow``)."""
    import tempfile

    from ganflow import callbacks, checkpoints, devices, signals
    from ganflow.data import training_pipeline

    started = time.perf_counter()
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    prepared = prepare(replace(config, eval_every=0), plugins)
    gan, done = prepared.gan, 0
    restored = None
    if resume_run_id:
        restored, done = _restore(gan, config, prepared.resolved, resume_run_id)
    with tempfile.TemporaryDirectory(prefix=f"ganflow-worker-{role.index}-") as scratch:
        store = checkpoints.Checkpoints(gan, Path(scratch) / "checkpoints", 1)
        logger = callbacks.MlflowLogger(
            _Nowhere(), config.log_every, prepared.steps_per_epoch, Path(scratch),
            lambda generator, path, title: (path, {}),
            resume_metrics=restored.restored_metrics
            if restored and done % prepared.steps_per_epoch else None)
        guard = callbacks.DivergenceGuard()
        saver = checkpoints.CheckpointCallback(
            store, prepared.steps_per_epoch if config.checkpoint_every is None
            else config.checkpoint_every, prepared.steps_per_epoch)
        try:
            with signals.terminate_as_interrupt():
                _fit_from(gan, lambda skip: training_pipeline(
                    prepared.source, prepared.per_step, config.seed).skip(skip), done,
                    prepared.steps_per_epoch, config.epochs, [guard, logger, saver], verbose,
                    lambda at: steps_per_call(config, prepared.steps_per_epoch, at))
            if (guard.diverged or saver.diverged) is None:
                saver.save()  # as the chief does last
        except devices.lost_peer_errors() as exc:
            raise devices.WorkerLost.during(exc, None, resume_run_id) from None
        except KeyboardInterrupt as exc:
            raise devices.WorkerStopped(
                f"{role.name} stopped by {signals.name_of(exc)} at step {store.steps_done}; "
                "the other workers stop when they miss it, and the chief keeps its last "
                "checkpoint: start every worker again with ganflow resume RUN_ID") from None
    return RunResult(
        run_id=resume_run_id or "", experiment="", tracking_uri="", samples_path=None,
        model_uri="", model_name=None, model_version=None,
        seconds=time.perf_counter() - started, metrics={}, steps_done=store.steps_done,
        worker=role)


class _Nowhere:
    """Where a worker that is not the chief logs: nowhere."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _hold(path: Path, run_id: str):
    """An exclusive lock on ``path`` for as long as the returned file is open: two
    ``ganflow resume`` of one run would train from one checkpoint folder and log the same
    steps twice."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"run {run_id} is being resumed by another process already: wait for "
                         "it to finish, or stop it first") from None
    return handle


def _log_model(config: RunConfig, gan, run_id: str, metrics: dict, prepared: Prepared,
               interrupted) -> tuple:
    """Log the generator, and register it when the run finished; returns (registered name,
    model URI, version, champion), the last three None when not registered."""
    from ganflow import models, registry

    model_name = None if interrupted or not config.register else config.model_name
    steps = int(gan.steps_done.numpy())
    model_uri = models.log_generator(gan.sampling_generator, config.latent_dim,
                                     gan.num_classes if gan.conditional else None, step=steps)
    version = champion = None
    if model_name is not None:
        made_by = {"recipe": config.recipe, "loss": config.loss, "dataset": config.dataset,
                   "ema": config.ema,
                   "regularizers": ";".join(config.regularizers) or None}
        evaluated = prepared.evaluator is not None and "eval/fid" in metrics
        tags = registry.version_tags(metrics, prepared.evaluator.params if evaluated else None,
                                     made_by)
        if evaluated:
            tags.update({"eval.dataset": config.dataset, "eval.samples": str(config.eval_samples)})
        version = registry.register(
            model_uri, model_name, tags,
            description=registry.describe_version(
                run_id, made_by, f"{config.epochs} epochs, {steps} training steps", tags),
            model_description=models.describe_model(
                model_name, config.recipe, prepared.source.spec.shape, config.latent_dim,
                gan.num_classes if gan.conditional else None))
        model_uri = f"models:/{model_name}/{version}"
        if evaluated:
            champion = registry.promote_champion(model_name, version)
    return model_name, model_uri, version, champion


def _stop_unreachable(exc: TrackingUnavailable, outbox: Outbox, pending: Path, store, run_id: str,
                      tracking_uri: str):
    """End a run whose tracking store went away: its checkpoint is saved; what the store did
    not take is saved beside it for ``ganflow resume``, which also closes the MLflow run."""
    import mlflow

    kept = outbox.save(pending)
    try:  # the store is away: the run cannot be marked; the next ganflow command marks it
        mlflow.end_run(status="KILLED")
    except mlflow.exceptions.MlflowException:
        pass
    latest = store.manager.latest_checkpoint
    where = f"checkpoint {latest} (step {store.steps_done})" if latest else "no checkpoint"
    raise TrackingUnavailable(
        f"{exc}: training stopped with {where}; {kept} logging calls saved in {pending}; when "
        f"the store answers again: ganflow resume {run_id} --tracking-uri {tracking_uri}"
    ) from None


# The most training steps one call into TensorFlow makes by default: a signal, a lost tracking
# store or a diverged loss is acted on when the call returns, at most this many steps late.
MOST_STEPS_PER_CALL = 32


def steps_per_call(config: RunConfig, steps_per_epoch: int, done: int) -> int:
    """Training steps per call into TensorFlow (Keras's ``steps_per_execution``) for a
    ``gan.fit`` that starts after ``done`` steps and ends at an epoch's end: the callbacks see
    every call's last step only, so a call must end wherever one of them acts (a metric
    window, a step checkpoint, an epoch's end). By default the most steps, up to
    ``MOST_STEPS_PER_CALL``, that fit between those; a given ``--steps-per-execution`` must
    fit there too."""
    ends = [config.log_every, steps_per_epoch, done % steps_per_epoch]
    if config.checkpoint_every:
        ends.append(config.checkpoint_every)
    most = math.gcd(*ends)
    wanted = config.steps_per_execution
    if wanted is None:
        return max(n for n in range(1, min(most, MOST_STEPS_PER_CALL) + 1) if most % n == 0)
    if most % wanted:
        fits = [n for n in range(1, most + 1) if most % n == 0]
        raise UsageError(
            f"--steps-per-execution {wanted} does not divide the {most} steps between the "
            f"run's metric windows (--log-every {config.log_every}), checkpoints and epoch ends "
            f"({steps_per_epoch} steps): pass one of {', '.join(map(str, fits[-6:]))}")
    return wanted


def _fit_from(gan, pipeline_from, done: int, steps_per_epoch: int, epochs: int, callbacks,
              verbose, per_call=lambda done: 1):
    """``gan.fit`` from ``done`` training steps on: a partial epoch first when ``done`` falls
    inside one (Keras starts epochs only at their beginning), then the remaining epochs. Each
    call gets the data stream from where it stands (``pipeline_from(steps to skip)``), and
    makes ``per_call(done)`` steps per call into TensorFlow (see ``steps_per_call``).
    Returns the last call's history (None when there was nothing left to train)."""
    history = None
    epoch, within = divmod(done, steps_per_epoch)
    common = {"callbacks": callbacks, "verbose": verbose,
              "shuffle": False}  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
    if within and epoch < epochs:
        _set_steps_per_call(gan, per_call(done))
        history = gan.fit(pipeline_from(done), epochs=epoch + 1, initial_epoch=epoch,
                          steps_per_epoch=steps_per_epoch - within, **common)
        epoch, done = epoch + 1, (epoch + 1) * steps_per_epoch
    if epoch < epochs and not gan.stop_training:
        _set_steps_per_call(gan, per_call(done))
        history = gan.fit(pipeline_from(done), epochs=epochs, initial_epoch=epoch,
                          steps_per_epoch=steps_per_epoch, **common)
    return history


def _set_steps_per_call(gan, steps: int) -> None:
    if gan.steps_per_execution != steps:
        gan.steps_per_execution = steps
        gan.train_function = None  # the count is part of the traced loop: trace it again


def _restore(gan, config: RunConfig, resolved: Resolved, run_id: str):
    """Load ``run_id``'s newest checkpoint into ``gan``, from the run's folder, else from its
    MLflow artifacts (``--checkpoint-to-mlflow``); returns (its ``Checkpoints``, steps done)."""
    from ganflow import checkpoints

    folder = Path(config.output_dir) / run_id / "checkpoints"
    if not checkpoints.saved_in(folder):
        checkpoints.fetch(run_id, folder)
    store = checkpoints.Checkpoints(gan, folder, config.keep_checkpoints)
    done = store.restore()
    _set_learning_rates(gan, config, resolved)
    return store, done


def _set_learning_rates(gan, config: RunConfig, resolved: Resolved) -> None:
    """A restored optimizer's constant rate is the checkpoint's: set it to this run's, which
    ``ganflow resume --lr-g/--lr-d`` may have changed. Schedules are objects, not restored."""
    if resolved.schedule.name == "constant":
        gan.g_optimizer.learning_rate = config.lr_g
        gan.d_optimizer.learning_rate = config.lr_d


def _fail_diverged(diverged: tuple[str, int], store, run_id: str, span: int = 1):
    """End the run FAILED, saying what stopped being finite (a loss, or the weights) and
    where (in one of the ``span`` steps up to ``step``), and how to go on; nothing is
    registered."""
    import mlflow

    from ganflow.errors import TrainingDiverged

    what, step = diverged
    what = "the weights are" if what == "weights" else f"{what} is"
    at = f"step {step}" if span == 1 else f"one of steps {step - span + 1}-{step}"
    kept = store.manager.latest_checkpoint
    mlflow.set_tags({"ganflow.failure": f"{what} not finite at {at}",
                     "ganflow.failed_at_step": str(step)})
    where = (f"the last good checkpoint is {Path(kept).name}: resume from it with lower "
             f"learning rates: ganflow resume {run_id} --lr-g LR --lr-d LR") if kept else \
        "there is no checkpoint yet: start again with lower --lr-g and --lr-d"
    raise TrainingDiverged(f"training diverged: {what} not finite at {at}; the run "
                           f"is marked FAILED and nothing was registered; {where}")


PENDING = "undelivered.jsonl"  # logging calls a stopped run could not send, beside its checkpoints

# Settings that only a trainer with networks uses: a maximum-likelihood run does not log them.
GAN_ONLY = ("loss", "regularizers", "epochs", "batch_size", "d_steps", "latent_dim",
            "optimizer", "g_optimizer", "d_optimizer", "lr_g", "lr_d", "lr_schedule", "ema",
            "steps_per_epoch", "jit", "log_every", "steps_per_execution", "eval_every",
            "eval_samples", "features", "feature_weights")
HELDOUT_SIZE = 10_000


def run_maximum_likelihood(config: RunConfig, resolved: Resolved,
                           tracking_uri: str) -> RunResult:
    """Fit P_G at once (the trainer's ``fit_density``), log the fit like a GAN run, register
    its sampler.

    Logs the mean log-likelihood of the training data and, when the data's density is known,
    of fresh held-out samples under the fit and under P_data itself (the best possible).
    """
    import mlflow
    import numpy as np

    from ganflow import models, registry, tracking, views
    from ganflow.training import TrainingSetup

    source = load_source(config, resolved)
    setup = TrainingSetup(
        spec=source.spec, source=source, architecture=resolved.architecture, loss=None,
        regularizers=[], latent_dim=config.latent_dim, d_steps=config.d_steps, seed=config.seed,
        ema=None, jit_compile=config.jit_compile, steps_per_epoch=0, epochs=config.epochs,
        names={"arch": config.arch, "dataset": config.dataset},
        architecture_entry=resolved.arch)
    trainer = resolved.trainer_object
    started = time.perf_counter()
    # Fitted before the MLflow run starts: a fit that cannot be made leaves no failed run.
    fitted = resolved.trainer.entry.call("to fit", trainer.fit_density, setup)
    providers = {"ganflow.plugin.trainer": resolved.trainer.entry.plugin,
                 "ganflow.plugin.arch": resolved.arch.plugin,
                 "ganflow.plugin.dataset": resolved.dataset.plugin,
                 "ganflow.objective": "maximum-likelihood"}
    params = {**_data_params(source), **resolved.trainer.params("trainer")}
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
        model_uri = models.log_generator(fitted.generator, latent_dim)
        version = None
        model_name = config.model_name if config.register else None
        if model_name is not None:
            made_by = {"recipe": config.recipe, "objective": "maximum-likelihood",
                       "arch": config.arch, "dataset": config.dataset}
            tags = registry.version_tags(metrics, None, made_by)
            version = registry.register(
                model_uri, model_name, tags,
                description=registry.describe_version(run_id, made_by, "fitted at once", tags),
                model_description=models.describe_model(
                    model_name, config.recipe, source.spec.shape, latent_dim, None))
            model_uri = f"models:/{model_name}/{version}"
    return RunResult(
        run_id=run_id,
        experiment=mlflow.get_experiment(active.info.experiment_id).name,
        experiment_id=active.info.experiment_id,
        tracking_uri=tracking_uri,
        samples_path=samples_path,
        model_uri=model_uri,
        model_name=model_name,
        model_version=version,
        seconds=time.perf_counter() - started,
        metrics=metrics,
    )
