"""What losses and regularizers see: one update of a training step, as a ``Step``.

A training step of the default trainer is k discriminator updates, then one generator update.
Each update builds a ``Step`` (``Step.forward``: G's samples and D's logits, made once) inside
its GradientTape and hands it to the loss (``d_loss(step)`` or ``g_loss(step)``) and to the
regularizers of that network (``regularizer(step)``). The record is immutable, so a lazy
regularizer, which runs inside a ``tf.cond``, can read it and keep what it computes to itself.
The generator update scores real examples only when the loss or a generator regularizer asks
(``generator_uses_real``): one that does not ask pays for no forward pass of real data there.

The traced step (this is the one place ganflow says it; the hooks and docs point here):
everything here runs inside a traced (``tf.function``, possibly XLA-compiled) training step.
Python code runs once, when the step is traced; ``print`` shows symbolic tensors at that time;
use ``tf.print`` or return metrics to see values. Use ``step.seed_generator`` for randomness,
never NumPy or Python's ``random`` (they would be frozen into the trace). Logits reach the loss
in float32 and its result is cast to float32, whatever the networks' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ganflow.errors import GanflowDeprecationWarning, PluginError

DISCRIMINATOR = "discriminator"
GENERATOR = "generator"
LOG_4 = 2.0 * math.log(2.0)


def value_function(real_logits, fake_logits):
    """The batch estimate of V(G, D) = E[log D(x)] + E[log(1 - D(G(z)))], from logits.

    log D = -softplus(-s) and log(1 - D) = -softplus(s): exact and stable for any logit.
    """
    from keras import ops

    return -ops.mean(ops.softplus(-real_logits)) - ops.mean(ops.softplus(fake_logits))


class Step:
    """One update, as a loss or regularizer sees it: an immutable record, its forward passes
    made once when the update builds it (``Step.forward``) and shared by the loss and the
    regularizers.

    update: ``"discriminator"`` or ``"generator"``: which network this update trains.
    index, d_steps: this is discriminator update ``index`` (0-based) of ``d_steps`` (k) in this
        training step; in the generator update ``index`` is k.
    global_step: generator updates done before this step (a scalar tensor): 0, 1, 2, ...
    batch_size: m, the examples (real and fake) in this update.
    real, labels: m fresh real examples, and their integer labels when the data is labelled
        (else None). In the generator update, ``real`` is there only when the loss (or a
        generator regularizer) sets ``generator_uses_real = True``; the step then draws m more
        real examples for it, so it is fresh there too.
    conditional: whether both networks take the label: ``fake`` = G(z, labels) and D scores
        (x, labels). The fakes are made for the labels of the update's real examples (in the
        generator update: of its own real examples, else of the last discriminator update's).
    z: the m noise vectors of this update; ``fake`` = G(z), or G(z, labels).
    real_logits, fake_logits: D's logits (float32) of ``real`` and ``fake``, shape (m, 1).
    generator, discriminator: both networks; ``training`` is the flag they are called with
        (True while training: BatchNorm uses batch statistics, dropout is on).
    seed_generator: a ``keras.random.SeedGenerator`` for any randomness a plugin needs
        (``keras.random.uniform(shape, seed=step.seed_generator)``): reproduced by ``--seed``.
    """

    __slots__ = ("update", "generator", "discriminator", "z", "_real", "labels", "_fake",
                 "_real_logits", "_fake_logits", "index", "d_steps", "global_step", "training",
                 "seed_generator", "_batch_size", "conditional", "augment")

    def __init__(self, update: str, *, generator, discriminator, z=None, real=None,
                 labels=None, fake=None, real_logits=None, fake_logits=None, index: int = 0,
                 d_steps: int = 1, global_step: Any = 0, training: bool = True,
                 seed_generator=None, batch_size=None, conditional: bool = False,
                 augment=None):
        if update not in (DISCRIMINATOR, GENERATOR):
            raise ValueError(f"update must be {DISCRIMINATOR!r} or {GENERATOR!r}, got {update!r}")
        if conditional and labels is None:
            raise ValueError("a conditional step needs labels")
        given = dict(update=update, generator=generator, discriminator=discriminator, z=z,
                     _real=real, labels=labels, _fake=fake, _real_logits=real_logits,
                     _fake_logits=fake_logits, index=index, d_steps=d_steps,
                     global_step=global_step, training=training, seed_generator=seed_generator,
                     _batch_size=batch_size, conditional=conditional, augment=augment)
        for name, value in given.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"a Step is immutable (set {name!r}): compute what you need "
                             "from it instead")

    @classmethod
    def forward(cls, update: str, *, generator, discriminator, z=None, real=None, labels=None,
                fake=None, conditional: bool = False, training: bool = True, augment=None,
                seed_generator=None, **kwargs) -> Step:
        """The step of an update, its forward passes made: ``fake`` = G(z) (unless given), D's
        logits of the fakes, and of ``real`` when the update has real examples (the generator
        update has them only when its loss or regularizers ask, see ``generator_uses_real``)."""
        if fake is None:
            fake = generator([z, labels] if conditional else z, training=training)

        def logits(x):
            return _discriminate(discriminator, x, labels, conditional, training, augment,
                                 seed_generator)

        return cls(update, generator=generator, discriminator=discriminator, z=z, real=real,
                   labels=labels, fake=fake,
                   real_logits=None if real is None else logits(real),
                   fake_logits=logits(fake), conditional=conditional, training=training,
                   augment=augment, seed_generator=seed_generator, **kwargs)

    @property
    def batch_size(self):
        if self._batch_size is not None:
            return self._batch_size
        from keras import ops

        for tensor in (self.z, self._real, self._fake, self._fake_logits, self._real_logits):
            if tensor is not None:
                return ops.shape(tensor)[0]
        raise ValueError("this step has no tensors to tell its batch size")

    @property
    def real(self):
        if self._real is None and self._real_logits is None:
            raise PluginError(
                f"the {self.update} update has no real examples: a loss or regularizer that "
                "reads step.real or step.real_logits in the generator update must set "
                "generator_uses_real = True (each step then draws m more real examples for it)")
        return self._real

    @property
    def fake(self):
        if self._fake is None:
            raise ValueError("this step has no fake examples")
        return self._fake

    @property
    def real_logits(self):
        if self._real_logits is None:
            self.real  # noqa: B018  says why there are none, when it is the generator update
            raise ValueError("this step has no real logits")
        return self._real_logits

    @property
    def fake_logits(self):
        if self._fake_logits is None:
            raise ValueError("this step has no fake logits")
        return self._fake_logits

    def discriminate(self, x):
        """D's logits of ``x`` (float32, whatever the network's dtype), called with
        ``training=step.training`` (and the labels, in a conditional run): e.g. on
        interpolates for a gradient penalty. While training, ``x`` first goes through the
        run's differentiable augmentations (``--augment``), as every input of D does."""
        return _discriminate(self.discriminator, x, self.labels, self.conditional,
                             self.training, self.augment, self.seed_generator)

    @classmethod
    def from_logits(cls, real_logits=None, fake_logits=None, update: str = DISCRIMINATOR,
                    **kwargs) -> Step:
        """A step with given logits and no networks: to evaluate a loss on known numbers
        (tests, ``ganflow theory``)."""
        from keras import ops

        def tensor(x):
            return None if x is None else ops.convert_to_tensor(x, "float32")

        return cls(update, generator=None, discriminator=None,
                   real_logits=tensor(real_logits), fake_logits=tensor(fake_logits), **kwargs)


def _discriminate(discriminator, x, labels, conditional, training, augment, seed_generator):
    from keras import ops

    if augment is not None and training:
        x = augment(x, seed_generator)
    inputs = [x, labels] if conditional else x
    return ops.cast(discriminator(inputs, training=training), "float32")


class StepLoss:
    """A GAN objective that sees the whole update (a ``ganflow.Step``).

    ``d_loss(step)`` and ``g_loss(step)`` return the scalar each network minimizes.
    ``metrics(step)`` returns named scalars to log (called on the last discriminator update of
    each training step; default none). Set ``generator_uses_real = True`` when ``g_loss``
    reads ``step.real`` or ``step.real_logits`` (e.g. a relativistic loss).
    """

    generator_uses_real = False

    def d_loss(self, step: Step):
        raise NotImplementedError

    def g_loss(self, step: Step):
        raise NotImplementedError

    def metrics(self, step: Step) -> dict[str, Any]:
        return {}


class Regularizer:
    """A term added to one network's loss: ``regularizer(step)`` returns a scalar.

    ``network`` is the update it is added to (``"discriminator"`` or ``"generator"``). Every
    regularizer takes the setting ``every=N`` from the engine: it then runs on every N-th
    update of its network only and is multiplied by N, so its average strength stays the same
    (lazy regularization, as in StyleGAN2). It may open its own ``tf.GradientTape`` (e.g. to
    take D's gradient with respect to its input); that tape runs inside the update's.
    """

    network = DISCRIMINATOR
    generator_uses_real = False

    def __call__(self, step: Step):
        raise NotImplementedError


@dataclass(frozen=True)
class Regularization:
    """A regularizer as a run uses it: its registered name (``reg/NAME`` in the metrics) and
    how often it runs."""

    name: str
    regularizer: Any
    every: int = 1

    @property
    def network(self) -> str:
        return getattr(self.regularizer, "network", DISCRIMINATOR)


class Augmentations:
    """The ``--augment`` chain as one function ``(x, seed_generator) -> x``: each
    augmentation in the order given."""

    def __init__(self, steps):
        self.steps = tuple(steps)

    def __call__(self, x, seed_generator):
        for step in self.steps:
            x = step(x, seed_generator)
        return x


def plugin_objects(loss, regularizations, augment) -> list:
    """The plugin objects a training step uses, in a fixed order (the loss as registered, the
    regularizers, the augmentations): where the engine looks for plugin state (``state``,
    ``observe``, ``metrics``; ``ganflow.hookspecs`` says what they are)."""
    objects = [loss.loss if isinstance(loss, LogitLoss) else loss]
    objects += [use.regularizer for use in regularizations
                if not isinstance(use.regularizer, Penalty)]
    objects += list(getattr(augment, "steps", [augment] if augment is not None else []))
    return objects


class LogitLoss(StepLoss):
    """A loss on logits (``ganflow.Loss``: ``discriminator_loss(real_logits, fake_logits)``,
    ``generator_loss(fake_logits)``) on the step: the short way to write a loss, adapted as
    TF-GAN's ``tuple_losses`` adapt its loss functions to ``GANModel``."""

    def __init__(self, loss):
        self.loss = loss

    def d_loss(self, step):
        return self.loss.discriminator_loss(step.real_logits, step.fake_logits)

    def g_loss(self, step):
        return self.loss.generator_loss(step.fake_logits)


class Penalty(Regularizer):
    """A logits loss's ``penalty(discriminator, real, fake)`` (deprecated) as the
    discriminator regularizer it is: ``discriminator`` is D as the step calls it (the labels
    of a conditional run and the run's augmentations added)."""

    def __init__(self, loss):
        self.loss = loss  # the plugin's own object, named when the penalty fails

    def __call__(self, step):
        return self.loss.penalty(_Discriminate(step), step.real, step.fake)


class _Discriminate:
    """D as a logits loss's ``penalty`` receives it: called on images alone, as the step's
    ``discriminate``; anything else (``trainable_variables``, ...) is D's own."""

    def __init__(self, step):
        self._step = step

    def __call__(self, x, training=None):
        return self._step.discriminate(x)

    def __getattr__(self, name):
        return getattr(self._step.discriminator, name)


def penalty_of(loss) -> list[Regularization]:
    """The regularization a logits loss's ``penalty`` asks for (with a warning: it is
    deprecated), or none."""
    loss = loss.loss if isinstance(loss, LogitLoss) else loss
    if loss_protocol(loss) != "logits" or getattr(loss, "penalty", None) is None:
        return []
    import warnings

    warnings.warn(f"{type(loss).__name__}.penalty(discriminator, real, fake) is deprecated: "
                  "write the penalty as a ganflow.Regularizer and register it "
                  "(ganflow_register_regularizers), then pass --regularizer NAME; it runs as "
                  "the regularizer 'penalty' (metric reg/penalty) meanwhile",
                  GanflowDeprecationWarning, stacklevel=2)
    return [Regularization("penalty", Penalty(loss))]


def loss_protocol(obj) -> str | None:
    """``"step"`` for a StepLoss-shaped object, ``"logits"`` for a ganflow.Loss-shaped one."""
    if callable(getattr(obj, "d_loss", None)) and callable(getattr(obj, "g_loss", None)):
        return "step"
    if callable(getattr(obj, "discriminator_loss", None)) and \
            callable(getattr(obj, "generator_loss", None)):
        return "logits"
    return None


def as_step_loss(obj) -> StepLoss:
    """Any registered loss on the step API."""
    protocol = loss_protocol(obj)
    if protocol == "step":
        return obj
    if protocol == "logits":
        return LogitLoss(obj)
    raise PluginError(
        f"{type(obj).__name__} is not a loss: it needs d_loss(step) and g_loss(step) "
        "(ganflow.StepLoss), or discriminator_loss(real_logits, fake_logits) and "
        "generator_loss(fake_logits) (ganflow.Loss)")


def check_regularizer(obj) -> None:
    if not callable(obj):
        raise PluginError(f"{type(obj).__name__} is not a regularizer: it must be callable "
                          "as regularizer(step) (subclass ganflow.Regularizer)")
    network = getattr(obj, "network", DISCRIMINATOR)
    if network not in (DISCRIMINATOR, GENERATOR):
        raise PluginError(f"{type(obj).__name__}.network must be {DISCRIMINATOR!r} or "
                          f"{GENERATOR!r}, got {network!r}")
