"""The second step of a run: everything it needs, built and checked, nothing yet started.

``prepare`` takes a ``Resolved`` and makes the strategy (first: ``--cpu-devices`` splits the
CPU only before TensorFlow runs anything), builds the loss, the regularizers and the
augmentations from their plugins, loads the data, builds the trainer's model under the
strategy and dtype policy, sizes the epochs and the calls into TensorFlow, and builds the
evaluator; the result is one immutable ``Prepared``. Still no MLflow run exists: a mistake
here leaves nothing half made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ganflow.errors import PluginError, UsageError
from ganflow.resolve import Resolved
from ganflow.step import (GENERATOR, Augmentations, Regularization, as_step_loss,
                          check_regularizer)
from ganflow.types import DatasetOptions


@dataclass(frozen=True)
class Objective:
    """What a GAN run's updates minimize, built from the resolved plugins."""

    loss: Any  # the loss object as registered (a ganflow.StepLoss or a ganflow.Loss), checked
    regularizations: tuple[Regularization, ...]
    augment: Callable | None  # the --augment chain as one function (x, seed_generator) -> x


@dataclass(frozen=True)
class Prepared:
    """A run's data, model and evaluator, ready to train."""

    resolved: Resolved
    source: Any  # what it trains on: the dataset plugin's DataSource (--data-fraction: a share)
    gan: Any  # the compiled ganflow.GAN
    steps_per_epoch: int
    worker: Any = None  # the devices.Worker this process is under --strategy multiworker
    evaluator: Any = None  # an evaluation.Evaluator, with --eval-every (the chief's)

    @property
    def config(self):
        return self.resolved.config

    @property
    def per_step(self) -> int:
        """Real examples a training step takes."""
        return self.gan.real_per_step(self.config.batch_size)

    @property
    def chief(self) -> bool:
        """Whether this process logs, checkpoints and registers (the only one, but under
        ``--strategy multiworker``)."""
        return self.worker is None or self.worker.chief

    @property
    def providers(self) -> dict[str, str]:
        providers = self.resolved.providers()
        if self.evaluator is not None:  # the default extractor is known once the data is
            providers["ganflow.plugin.features"] = self.evaluator.provider
        return providers

    def params(self) -> dict[str, Any]:
        """What the run logs beside its settings: the data, every plugin setting, how it
        computes, and what its evaluations are measured with."""
        gan = self.gan
        return {**data_params(self.source), **self.resolved.params(),
                "replicas": gan.distribute_strategy.num_replicas_in_sync,
                "dtype_policy": gan.generator.dtype_policy.name,
                **(self.evaluator.params if self.evaluator is not None else {})}


def load_source(resolved: Resolved):
    """The dataset plugin's source; its failures name the plugin."""
    config, dataset = resolved.config, resolved.components["dataset"]
    options = DatasetOptions(dataset.argument, config.data_dir, config.image_size)
    return dataset.entry.call("to load", dataset.entry.obj, options)


def data_params(source) -> dict[str, Any]:
    return {
        "data_shape": "x".join(map(str, source.spec.shape)),
        "data_size": source.spec.size,
        **{f"data_{k}": v for k, v in source.info.items()},
    }


def prepare(resolved: Resolved, worker=None) -> Prepared:
    """Build and check everything a run needs (see the module docstring); ``worker``: this
    process's ``devices.Worker`` under ``--strategy multiworker``.

    When the recipe, not the user, asked for ``--eval-every`` (``RunConfig.from_recipe``),
    images without labels are not evaluated, with a line on stderr that says so: their
    default features, InceptionV3's, would download weights and take a quarter of an hour
    per evaluation on a CPU. A worker that is not the chief does not evaluate.
    """
    import keras

    from ganflow import devices, evaluation
    from ganflow.data import batches_per_pass
    from ganflow.gan import GAN

    config = resolved.config
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    strategy = devices.make_strategy(config.strategy, config.cpu_devices, config.worker_timeout)
    _check_distribution(config, strategy.num_replicas_in_sync)
    if not callable(getattr(resolved.trainer, "build", None)):
        raise UsageError(f"trainer {config.trainer} fits a density at once: a maximum-"
                         "likelihood run has no model to prepare")
    # In the strategy's scope: a plugin's state (its keras.Variables) is made on every replica.
    with strategy.scope():
        objective = build_objective(resolved)
    full = load_source(resolved)
    # Training may see a share of the data; evaluations always compare with all of it.
    source = full.subset(config.data_fraction) if config.data_fraction else full
    if config.conditional and not (source.labelled and source.spec.num_classes):
        raise UsageError(f"--conditional needs labelled data, and {config.dataset} has no "
                         "labels: drop --conditional, or use a labelled dataset")
    # Steps per pass as the default step consumes data: the schedules' lengths depend on it.
    per_step = config.batch_size * (
        config.d_steps + int(GAN.reads_real(objective.loss, objective.regularizations)))
    per_pass = batches_per_pass(source.spec.size, config.batch_size, per_step)  # fits at all?
    keras.utils.set_random_seed(config.seed)
    # Networks, EMA copy and optimizers are made in the strategy's scope (mirrored on every
    # replica) and with the run's dtype policy.
    with strategy.scope(), devices.dtype_policy(devices.resolve_precision(config.precision)):
        gan = _build_model(resolved, objective, setup_for(
            resolved, objective, source, config.steps_per_epoch or per_pass))
    if gan.real_per_step(config.batch_size) != per_step:  # a trainer's own step
        per_pass = batches_per_pass(source.spec.size, config.batch_size,
                                    gan.real_per_step(config.batch_size))
        if not config.steps_per_epoch and resolved.components["lr_schedule"].name != "constant":
            trainer = resolved.components["trainer"]
            raise PluginError(
                f"plugin {trainer.plugin}: trainer {trainer.name!r} takes "
                f"{gan.real_per_step(config.batch_size)} real examples per step where its loss "
                f"and k ask for {per_step}: the learning-rate schedule would not span the "
                "run; pass --steps-per-epoch")
    steps_per_epoch = config.steps_per_epoch or per_pass
    steps_per_call(config, steps_per_epoch, 0)  # a --steps-per-execution that cannot fit: now

    evaluator = None
    chief = worker is None or worker.chief
    inception_by_default = not config.features and \
        evaluation.default_features(full) == "inception"
    if chief and config.eval_every and config.from_recipe("eval_every") and inception_by_default:
        evaluation.log_to_stderr(
            f"Not evaluating: {config.dataset} has no labels for the domain classifier; pass "
            "--eval-every N --features inception to evaluate with InceptionV3")
    elif chief and config.eval_every:
        # Before the run starts: missing weights or unlabelled data must cost seconds.
        evaluator = evaluation.build(resolved.plugins, full, config.dataset, config.features,
                                     config.feature_weights, config.eval_samples, config.seed)
    return Prepared(resolved, source, gan, steps_per_epoch, worker, evaluator)


def build_objective(resolved: Resolved) -> Objective:
    """The loss, the regularizers and the augmentation chain, each built from its plugin
    (with its settings) and checked for its contract: a factory's product is only known
    once built."""
    steps = [component.build() for _, component in resolved.named("augment")]
    return Objective(
        loss=_checked(resolved.components["loss"]),
        regularizations=tuple(Regularization(name, _checked(component), component.engine["every"])
                              for name, component in resolved.named("regularizer")),
        augment=Augmentations(steps) if steps else None)


def _checked(component):
    obj = component.build()
    try:
        if component.entry.kind == "loss":
            as_step_loss(obj)
        else:
            check_regularizer(obj)
    except PluginError as exc:
        raise component.entry.problem(exc) from None
    return obj


def setup_for(resolved: Resolved, objective: Objective, source, steps_per_epoch: int):
    """The ``ganflow.TrainingSetup`` a trainer receives."""
    from ganflow.training import TrainingSetup

    config = resolved.config

    def make_optimizer(network: str, total_updates: int):
        rate = config.lr_g if network == GENERATOR else config.lr_d
        schedule = resolved.components["lr_schedule"].build(rate, total_updates)
        return resolved.optimizer(network).build(schedule)

    return TrainingSetup(
        spec=source.spec, source=source, architecture=resolved.architecture,
        loss=objective.loss, regularizers=list(objective.regularizations),
        latent_dim=config.latent_dim, d_steps=config.d_steps, seed=config.seed, ema=config.ema,
        jit_compile=config.jit_compile, steps_per_epoch=steps_per_epoch, epochs=config.epochs,
        make_optimizer=make_optimizer, names={"arch": config.arch, "dataset": config.dataset},
        conditional=config.conditional, architecture_entry=resolved.components["arch"].entry,
        augment=objective.augment,
    )


# The most training steps one call into TensorFlow makes by default: a signal, a lost tracking
# store or a diverged loss is acted on when the call returns, at most this many steps late.
MOST_STEPS_PER_CALL = 32


def steps_per_call(config, steps_per_epoch: int, done: int) -> int:
    """Training steps per call into TensorFlow (Keras's ``steps_per_execution``) for a
    ``gan.fit`` that starts after ``done`` steps and ends at an epoch's end: the callbacks see
    every call's last step only, so a call must end wherever one of them acts (a metric
    window, a step checkpoint, an epoch's end). By default the most steps, up to
    ``MOST_STEPS_PER_CALL``, that fit between those; a given ``--steps-per-execution`` must
    fit there too. Under ``--strategy mirrored`` and ``multiworker``, one step per call."""
    wanted = config.steps_per_execution
    if config.strategy in ("mirrored", "multiworker"):
        # Keras 3.15's loop of several steps per call (multi_step_on_iterator: a tf.while_loop
        # whose body runs the step inside a tf.cond) fails under a strategy of several
        # replicas, across workers as on 2 CPU devices of one: "You must feed a value for
        # placeholder tensor 'while/body/_1/while/cond/...'", in float32 as in bfloat16
        # (measured December 2026; Keras 3 has no test of it, keras-team/keras#20585).
        if wanted not in (None, 1):
            raise UsageError(f"--steps-per-execution {wanted} with --strategy "
                             f"{config.strategy}: Keras 3.15 cannot run several steps per "
                             "call across replicas; leave it out (1 step per call there)")
        return 1
    ends = [config.log_every, steps_per_epoch, done % steps_per_epoch]
    if config.checkpoint_every:
        ends.append(config.checkpoint_every)
    most = math.gcd(*ends)
    if wanted is None:
        return max(n for n in range(1, min(most, MOST_STEPS_PER_CALL) + 1) if most % n == 0)
    if most % wanted:
        fits = [n for n in range(1, most + 1) if most % n == 0]
        raise UsageError(
            f"--steps-per-execution {wanted} does not divide the {most} steps between the "
            f"run's metric windows (--log-every {config.log_every}), checkpoints and epoch ends "
            f"({steps_per_epoch} steps): pass one of {', '.join(map(str, fits[-6:]))}")
    return wanted


def _check_distribution(config, replicas: int) -> None:
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


def _build_model(resolved: Resolved, objective: Objective, setup):
    """``trainer.build(setup)``, checked to be a compiled ``ganflow.GAN``; a loss or
    regularizer that fails its check before training is named with its plugin."""
    from ganflow.gan import GAN, StepCheckError

    trainer = resolved.components["trainer"]
    try:
        gan = trainer.entry.call("to build the model", resolved.trainer.build, setup)
    except StepCheckError as exc:
        owners = {id(objective.loss): resolved.components["loss"]}
        for (_, component), use in zip(resolved.named("regularizer"), objective.regularizations):
            owners[id(use.regularizer)] = component
        owner = owners.get(id(exc.component))
        if owner is None:
            raise
        raise owner.entry.problem(exc) from exc
    if not isinstance(gan, GAN):
        raise PluginError(f"plugin {trainer.plugin}: trainer {trainer.name!r} built a "
                          f"{type(gan).__name__}; build(setup) must return a compiled "
                          "ganflow.GAN (or subclass)")
    return gan
