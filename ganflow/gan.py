"""GAN(keras.Model): each train_step is k discriminator updates, then one generator update.

Each batch holds k*m real examples (k+1)*m when the generator update reads real data too):
update i of D sees slice i (m fresh real examples) and m fresh noise samples; G's update draws
another m noise samples. Every update hands a ``ganflow.Step`` to the loss and to the
regularizers of its network. Noise comes from the model's own SeedGenerator, so a seed
reproduces a run.

Trainers build one with ``GAN.from_setup``; they change the step by subclassing ``GAN`` and
overriding ``train_step``, built from the public ``split``, ``part``, ``generator_part``,
``discriminator_update``, ``generator_update``, ``update_ema`` and ``report``.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from ganflow import devices, noise
from ganflow.errors import PluginError, UsageError, last_line
from ganflow.step import (DISCRIMINATOR, GENERATOR, LOG_4, LogitLoss, Penalty, Regularization,
                          Step, as_step_loss, penalty_of, plugin_objects, value_function)

__all__ = ["GAN", "LOG_4", "value_function"]

# The batch a loss is tried on before training (see GAN.check_step).
PROBE_BATCH = 2


class StepCheckError(PluginError):
    """A loss or regularizer failed the check before training; ``component`` is the object."""

    def __init__(self, message: str, component):
        super().__init__(message)
        self.component = component


class GAN(keras.Model):
    """A generator and a discriminator trained against each other.

    ``call(z)`` generates. ``compile(d_optimizer, g_optimizer, loss, regularizers)`` takes a
    loss (``ganflow.StepLoss`` or ``ganflow.Loss``) and ``ganflow.Regularization``s. ``fit`` on
    batches of ``real_per_step(m)`` real examples (or (examples, labels) pairs) reports
    ``d_loss`` and ``g_loss`` (each the total its network minimizes, regularizers included),
    the loss's own metrics, and ``reg/NAME`` for each regularizer (the mean of its value over
    the updates it ran in).
    """

    def __init__(self, generator, discriminator, latent_dim, d_steps=1, seed=None, ema=None,
                 num_classes=None, conditional=False, augment=None, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = int(latent_dim)
        self.d_steps = int(d_steps)
        self.num_classes = num_classes
        if conditional and not num_classes:
            raise ValueError("a conditional GAN needs num_classes")
        self.conditional = bool(conditional)
        self.augment = augment  # (x, seed_generator) -> x, before D while training
        self.seed_generator = noise.seed_generator(seed, "train")
        self.plugin_seed_generator = noise.seed_generator(seed, "plugins")
        self.ema = ema
        self.ema_generator = None
        if ema is not None:
            if not 0.0 < ema < 1.0:
                raise ValueError(f"ema must be in (0, 1), got {ema}")
            # A copy of the generator whose weights follow an exponential moving average of G's.
            self.ema_generator = keras.models.clone_model(generator)
            self.ema_generator.set_weights(generator.get_weights())
        self.trackers = {}
        # Training steps done, counted inside the step (in ``report``): what a checkpoint
        # records, whatever a trainer's step does.
        # Under tf.distribute each replica runs the step: the first replica's count is kept
        # (as an optimizer's iterations), so a global step counts once.
        self.steps_done = keras.Variable(0, dtype="int64", trainable=False, name="steps_done",
                                         aggregation="only_first_replica")

    @classmethod
    def from_setup(cls, setup, generator_updates_per_step: int = 1, **kwargs):
        """A compiled model for a trainer's ``ganflow.TrainingSetup``: the architecture's
        networks, the run's optimizers (the generator's schedule sized for
        ``generator_updates_per_step``), loss, regularizers and settings. ``kwargs`` go to the
        constructor (a subclass's own arguments)."""
        generator, discriminator = setup.networks()
        gan = cls(generator, discriminator, setup.latent_dim, setup.d_steps, seed=setup.seed,
                  ema=setup.ema, num_classes=setup.num_classes, conditional=setup.conditional,
                  augment=setup.augment, **kwargs)
        gan.compile(setup.optimizer(DISCRIMINATOR),
                    setup.optimizer(GENERATOR, updates_per_step=generator_updates_per_step),
                    setup.loss, setup.regularizers, jit_compile=setup.jit_compile)
        return gan

    @property
    def sampling_generator(self):
        """The generator to sample from: the EMA copy when ``ema`` is set, else G itself."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def compile(self, d_optimizer, g_optimizer, loss, regularizers=(), jit_compile="auto",
                **kwargs):
        # No optimizer of Keras's own: the two networks have theirs (Keras would make an
        # unused RMSprop, and build its slots for every weight under a strategy).
        super().compile(optimizer=None, jit_compile=jit_compile, **kwargs)
        # A network computing in float16 (mixed_float16) needs its gradients loss-scaled, or
        # small ones underflow to 0: as keras.Model.compile does for its one optimizer.
        d_optimizer = _loss_scaled(d_optimizer, self.discriminator)
        g_optimizer = _loss_scaled(g_optimizer, self.generator)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.gan_loss = as_step_loss(loss)
        self.regularizations = [r if isinstance(r, Regularization)
                                else Regularization(type(r).__name__.lower(), r)
                                for r in regularizers] + penalty_of(loss)
        # The plugin objects, which may keep state across steps (ganflow.hookspecs, "State"):
        # those that follow D after each of its updates, and those that log metrics of their
        # own (the loss's come through gan_loss).
        self.plugin_objects = plugin_objects(loss, self.regularizations, self.augment)
        self._observers = [obj for obj in self.plugin_objects
                           if callable(getattr(obj, "observe", None))]
        self._reporters = [obj for obj in self.plugin_objects[1:]
                           if callable(getattr(obj, "metrics", None))]
        # Building the optimizers here, against their own variables, is what tf.distribute and
        # XLA need: no variable may be created inside the compiled step. One forward pass first
        # builds networks that create their weights lazily (subclassed models).
        label = ops.zeros((1,), "int32")
        self.discriminator(self.conditioned(self.generator(self.conditioned(
            ops.zeros((1, self.latent_dim)), label)), label))
        # The GAN holds no weights of its own: mark it built, or fit under a tf.distribute
        # strategy (which builds the model symbolically first) calls it on a real batch.
        self.built = True
        d_optimizer.build(self.discriminator.trainable_variables)
        g_optimizer.build(self.generator.trainable_variables)
        names = self.check_step()
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._across_workers = devices.across_workers()

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def plugin_state(self) -> dict:
        """Every plugin object's state variables, by a stable name (its place among the
        run's plugin objects, then its own name): what checkpoints save and restore."""
        return {f"{i}_{name}": variable for i, obj in enumerate(self.plugin_objects)
                for name, variable in (getattr(obj, "state", None) or {}).items()}

    @property
    def generator_uses_real(self) -> bool:
        """Whether the generator update reads real examples (then each step takes m more)."""
        return self.reads_real(self.gan_loss, self.regularizations)

    @staticmethod
    def reads_real(loss, regularizations) -> bool:
        """Whether ``loss`` or a generator regularizer sets ``generator_uses_real``."""
        return bool(getattr(loss, "generator_uses_real", False)) or any(
            getattr(r.regularizer, "generator_uses_real", False)
            for r in regularizations if r.network == GENERATOR)

    def real_per_step(self, batch_size: int) -> int:
        """Real examples one training step consumes: m per discriminator update, plus m for
        the generator update when it reads real data."""
        return batch_size * (self.d_steps + int(self.generator_uses_real))

    # The one shim over Keras's private API, for Keras 3.15 under MultiWorkerMirroredStrategy
    # (keras-team/keras#20585, tensorflow/tensorflow#72388: Keras 3 has no test of it): under
    # a tf.distribute strategy, fit first takes a batch and reduces it across the replicas to
    # build the model symbolically, and across workers that reduce fails ("Attempt to convert
    # a value (PerReplica...) to a Tensor"). compile built every network and optimizer, so
    # there is nothing to build. tests/test_gan.py fails if Keras renames the method.
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not self.built:
            super()._maybe_symbolic_build(iterator, data_batch)

    def fit(self, x=None, *args, shuffle=False, **kwargs):
        """``keras.Model.fit``, on batches of ``real_per_step(m)`` real examples: a tf.data
        pipeline, which shuffles itself (``ganflow.data.training_pipeline``), so Keras's
        ``shuffle`` is off by default (Keras ignores it for a dataset, and warns)."""
        return super().fit(x, *args, shuffle=shuffle, **kwargs)

    def set_steps_per_execution(self, steps: int) -> None:
        """Make ``steps`` training steps per call into TensorFlow from the next ``fit`` on:
        what ``compile(steps_per_execution=...)`` sets; the count is part of the traced loop,
        so the train function is made again."""
        if self.steps_per_execution != steps:
            self.steps_per_execution = steps
            self.make_train_function(force=True)

    def build(self, input_shape):
        if not self.generator.built:
            self.generator.build(input_shape)

    def call(self, inputs, training=False):
        """G's samples of ``z``, or of ``[z, labels]`` in a conditional GAN."""
        return self.generator(inputs, training=training)

    def conditioned(self, x, labels):
        """A network's input: ``x``, or ``[x, labels]`` in a conditional GAN."""
        return [x, labels] if self.conditional else x

    def noise(self, m):
        """m latent vectors from the model's SeedGenerator. Under a tf.distribute strategy
        with R replicas, every replica draws the global batch's R*m from the same seed and
        keeps its own slice: replicas get different z, and a step's z are those a single
        device would draw for the global batch."""
        return devices.replica_share(
            lambda n: keras.random.normal((n, self.latent_dim), seed=self.seed_generator), m)

    def train_step(self, data):
        real, labels, m = self.split(data)
        for i in range(self.d_steps):
            d_loss, step = self.discriminator_update(self.part(real, i, m),
                                                     self.part(labels, i, m), index=i)
        g_loss = self.generator_update(m, *self.generator_part(real, labels, m, step))
        self.update_ema()
        return self.report(d_loss, g_loss, step)

    def split(self, data):
        """A batch from the pipeline as (real examples, labels or None, m)."""
        real, labels = data if isinstance(data, (tuple, list)) else (data, None)
        if self.conditional and labels is None:
            raise ValueError("a conditional GAN trains on (examples, labels) batches")
        if labels is not None:
            labels = ops.cast(labels, "int32")
        m = ops.shape(real)[0] // (self.d_steps + int(self.generator_uses_real))
        return real, labels, m

    @staticmethod
    def part(x, i, m):
        """Slice ``i`` of ``m`` examples (None stays None)."""
        return None if x is None else x[i * m : (i + 1) * m]

    def generator_part(self, real, labels, m, step):
        """(real, labels) for the generator update: the batch's last m examples when the loss
        reads real data there (``generator_uses_real``); else no real data, and in a
        conditional GAN the labels of ``step``, the last discriminator update."""
        if self.generator_uses_real:
            return self.part(real, self.d_steps, m), self.part(labels, self.d_steps, m)
        return None, (step.labels if self.conditional else None)

    def report(self, d_loss, g_loss, step):
        """Count the step, update the metrics with its losses and the loss's own metrics of
        its last discriminator update (``step``); returns what ``train_step`` returns (a
        ``train_step`` of a subclass must return it too: it counts the steps checkpoints
        record)."""
        self.steps_done.assign_add(1)
        self.trackers["d_loss"].update_state(d_loss)
        self.trackers["g_loss"].update_state(g_loss)
        for source in (self.gan_loss, *self._reporters):
            for name, value in source.metrics(step).items():
                self.trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        if self._across_workers:
            # Keras 3.15's fit reduces each replica's logs along axis 0 across workers, which
            # fails for scalars ("Invalid reduction dimension 0"): give it vectors of one.
            return {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def discriminator_update(self, real, labels=None, index: int = 0):
        """One update of D on ``real`` and as many fresh fakes; returns (its loss, the Step)."""
        with tf.GradientTape() as tape:
            step = self._step(DISCRIMINATOR, ops.shape(real)[0], real, labels, index)
            loss = self._total(self.gan_loss.d_loss(step), step, self.d_optimizer)
            # The loss scale of a LossScaleOptimizer (mixed_float16): apply_gradients unscales.
            scaled = self.d_optimizer.scale_loss(loss * self._replica_scale())
        variables = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        for obj in self._observers:  # plugin state that follows D (ADA's p)
            obj.observe(step)
        return loss, step

    def generator_update(self, m, real=None, labels=None):
        """One update of G on ``m`` fresh noise samples (and ``real``, when the loss reads
        real data in this update; ``labels`` for the fakes, in a conditional GAN); returns its
        loss."""
        with tf.GradientTape() as tape:
            step = self._step(GENERATOR, m, real, labels, self.d_steps)
            loss = self._total(self.gan_loss.g_loss(step), step, self.g_optimizer)
            scaled = self.g_optimizer.scale_loss(loss * self._replica_scale())
        # A generator without trainable weights (a fixed P_G, as in `ganflow theory`) stays put.
        variables = self.generator.trainable_variables
        if variables:
            self.g_optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return loss

    def _step(self, update, m, real, labels, index) -> Step:
        """The update's Step, its forward passes made (inside the update's tape)."""
        return Step.forward(update, generator=self.generator, discriminator=self.discriminator,
                            z=self.noise(m), real=real, labels=labels, index=index,
                            d_steps=self.d_steps,
                            # A snapshot: read before this step's own G update adds one.
                            global_step=ops.convert_to_tensor(self.g_optimizer.iterations),
                            training=True, seed_generator=self.plugin_seed_generator,
                            batch_size=m, conditional=self.conditional, augment=self.augment)

    @staticmethod
    def _replica_scale():
        # Keras sums gradients across replicas; scaling by 1/replicas makes that a mean.
        return 1.0 / devices.replicas()

    def _total(self, loss, step, optimizer):
        """The loss plus this network's regularizers, in float32; lazy ones every N-th update."""
        total = ops.cast(loss, "float32")
        for use in self.regularizations:
            if use.network != step.update:
                continue
            if use.every == 1:
                value, ran = ops.cast(use.regularizer(step), "float32"), 1.0
            else:
                due = ops.equal(optimizer.iterations % use.every, 0)
                value = tf.cond(
                    due,
                    lambda use=use: ops.cast(use.regularizer(step), "float32"),
                    lambda: tf.constant(0.0),
                )
                ran = ops.cast(due, "float32")
            total = total + use.every * value
            self.trackers[f"reg/{use.name}"].update_state(value, sample_weight=ran)
        return total

    def check_step(self) -> list[str]:
        """Try the loss and regularizers once, eagerly, on a batch of ``PROBE_BATCH`` zeros
        (networks in inference mode, so no statistics or random state move); returns the
        metric names. A failure, a non-scalar loss or a generator update that reads real data
        it did not ask for raises ``StepCheckError`` naming the culprit."""
        m = PROBE_BATCH
        z = ops.zeros((m, self.latent_dim))
        labels = ops.zeros((m,), "int32") if self.num_classes else None
        real = ops.zeros((m, *self.generator(self.conditioned(z, labels),
                                             training=False).shape[1:]))
        seeds = keras.random.SeedGenerator(0)

        def probe(update, real_part):
            given = real_part is not None or self.conditional
            return Step.forward(
                update, generator=self.generator, discriminator=self.discriminator, z=z,
                real=real_part, labels=labels if given else None, d_steps=self.d_steps,
                index=0 if update == DISCRIMINATOR else self.d_steps,
                global_step=ops.zeros((), "int64"), training=False, seed_generator=seeds,
                batch_size=m, conditional=self.conditional)

        loss = self.gan_loss
        component = loss.loss if isinstance(loss, LogitLoss) else loss  # the plugin's own
        step = probe(DISCRIMINATOR, real)
        _scalar(_attempt(component, "d_loss", lambda: loss.d_loss(step)), component, "d_loss")
        metrics = _attempt(component, "metrics", lambda: loss.metrics(step))
        if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
            raise StepCheckError(f"{type(component).__name__}.metrics(step) must return a dict "
                                 f"of names to scalars, got {type(metrics).__name__}", component)
        for name, value in metrics.items():
            _scalar(value, component, f"metric {name!r}")
        g_step = probe(GENERATOR, real if self.generator_uses_real else None)
        _scalar(_attempt(component, "g_loss", lambda: loss.g_loss(g_step)), component, "g_loss")
        if self.augment is not None:
            augmented = _attempt(self.augment, "(the --augment chain)",
                                 lambda: self.augment(real, seeds))
            if tuple(augmented.shape) != tuple(real.shape):
                raise StepCheckError(f"the --augment chain turned examples of shape "
                                     f"{tuple(real.shape)} into {tuple(augmented.shape)}",
                                     self.augment)
        names = ["d_loss", "g_loss", *metrics]
        for obj in self._reporters:
            more = _attempt(obj, "metrics", lambda: obj.metrics(step))
            if not isinstance(more, dict):
                raise StepCheckError(f"{type(obj).__name__}.metrics(step) must return a dict "
                                     f"of names to scalars, got {type(more).__name__}", obj)
            for name, value in more.items():
                _scalar(value, obj, f"metric {name!r}")
            names += list(more)
        for use in self.regularizations:
            s = step if use.network == DISCRIMINATOR else g_step
            # A deprecated logits-loss penalty is the loss's to answer for.
            owner = use.regularizer.loss if isinstance(use.regularizer, Penalty) else \
                use.regularizer
            _scalar(_attempt(owner, "its call" if owner is use.regularizer else "penalty",
                             lambda: use.regularizer(s)), owner, "the regularizer")
            names.append(f"reg/{use.name}")
        if len(set(names)) != len(names):
            raise StepCheckError(f"metric names clash: {', '.join(names)}: rename a metric of "
                                 f"{type(component).__name__}", component)
        return names

    def update_ema(self):
        """Move the EMA copy of G towards G's weights (nothing without ``ema``)."""
        if self.ema_generator is None:
            return
        # Warm-up as in tf.train.ExponentialMovingAverage(num_updates=t), t = G updates so far:
        # early on the average forgets its random start faster, so early samples are not a
        # blur of the initial G.
        t = ops.cast(self.g_optimizer.iterations, "float32")
        decay = ops.minimum(self.ema, (1.0 + t) / (10.0 + t))
        for average, weight in zip(self.ema_generator.weights, self.generator.weights):
            average.assign(decay * average + (1.0 - decay) * ops.cast(weight, average.dtype))


def _loss_scaled(optimizer, network):
    """``optimizer``, wrapped in a LossScaleOptimizer when a layer of ``network`` computes in
    float16 and it is not one already."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    if any(getattr(layer, "compute_dtype", None) == "float16"
           for layer in (network, *network.layers)):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _attempt(component, what: str, call):
    try:
        return call()
    except (StepCheckError, UsageError):
        raise  # a UsageError is the plugin telling the user what to change
    except PluginError as exc:
        raise StepCheckError(str(exc), component) from exc
    except Exception as exc:
        last = last_line(exc)
        raise StepCheckError(f"{type(component).__name__} {what} failed on a batch of "
                             f"{PROBE_BATCH}: {type(exc).__name__}: {last}", component) from exc


def _scalar(value, component, what: str):
    try:
        shape = tuple(ops.convert_to_tensor(value).shape)
    except Exception:
        raise StepCheckError(f"{type(component).__name__}: {what} returned "
                             f"{type(value).__name__}, not a scalar tensor", component) from None
    if shape != ():
        raise StepCheckError(
            f"{type(component).__name__}: {what} returned shape {shape} on a batch of "
            f"{PROBE_BATCH}, not a scalar: reduce it, e.g. with ops.mean (the gradient of a "
            "vector is that of its sum, which grows with the batch size)", component)
    return value
