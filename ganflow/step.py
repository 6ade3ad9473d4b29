"""What losses and regularizers see: one update of a training step, as a ``Step``.

A training step of the default trainer is k discriminator updates, then one generator update.
Each update builds a ``Step`` and hands it to the loss (``d_loss(step)`` or ``g_loss(step)``)
and to the regularizers of that network (``regularizer(step)``), inside the update's
GradientTape. Forward passes are made when first asked for and then shared: a loss that never
reads ``real_logits`` in the generator update does not pay for them.

Everything here runs inside a traced (``tf.function``, possibly XLA-compiled) training step:
Python code runs once, when the step is traced; ``print`` shows symbolic tensors at that time;
use ``tf.print`` or return metrics to see values. Use ``step.seed_generator`` for randomness,
never NumPy or Python's ``random`` (they would be frozen into the trace).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ganflow.errors import PluginError

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
    """One update, as a loss or regularizer sees it.

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

    def __init__(self, update: str, *, generator, discriminator, z=None, real=None,
                 labels=None, fake=None, real_logits=None, fake_logits=None, index: int = 0,
                 d_steps: int = 1, global_step: Any = 0, training: bool = True,
                 seed_generator=None, batch_size=None, conditional: bool = False,
                 augment=None):
        if update not in (DISCRIMINATOR, GENERATOR):
            raise ValueError(f"update must be {DISCRIMINATOR!r} or {GENERATOR!r}, got {update!r}")
        self.update = update
        self.generator = generator
        self.discriminator = discriminator
        self.z = z
        self._real = real
        self.labels = labels
        self._fake = fake
        self._real_logits = real_logits
        self._fake_logits = fake_logits
        self.index = index
        self.d_steps = d_steps
        self.global_step = global_step
        self.training = training
        self.seed_generator = seed_generator
        self._batch_size = batch_size
        self.conditional = conditional
        self.augment = augment
        if conditional and labels is None:
            raise ValueError("a conditional step needs labels")

    @property
    def is_discriminator_update(self) -> bool:
        return self.update == DISCRIMINATOR

    @property
    def is_generator_update(self) -> bool:
        return self.update == GENERATOR

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
            if self.z is None:
                raise ValueError("this step has neither fake examples nor noise to make them")
            inputs = [self.z, self.labels] if self.conditional else self.z
            self._fake = self.generator(inputs, training=self.training)
        return self._fake

    @property
    def real_logits(self):
        if self._real_logits is None:
            self._real_logits = self.discriminate(self.real)
        return self._real_logits

    @property
    def fake_logits(self):
        if self._fake_logits is None:
            self._fake_logits = self.discriminate(self.fake)
        return self._fake_logits

    def discriminate(self, x):
        """D's logits of ``x`` (float32, whatever the network's dtype), called with
        ``training=step.training`` (and the labels, in a conditional run): e.g. on
        interpolates for a gradient penalty. While training, ``x`` first goes through the
        run's differentiable augmentations (``--augment``), as every input of D does."""
        from keras import ops

        if self.augment is not None and self.training:
            x = self.augment(x, self.seed_generator)
        inputs = [x, self.labels] if self.conditional else x
        return ops.cast(self.discriminator(inputs, training=self.training), "float32")

    def fork(self) -> Step:
        """The same update, sharing what is computed so far: what a lazy regularizer receives,
        so that what it computes inside its conditional branch stays there."""
        return Step(self.update, generator=self.generator, discriminator=self.discriminator,
                    z=self.z, real=self._real, labels=self.labels, fake=self._fake,
                    real_logits=self._real_logits, fake_logits=self._fake_logits,
                    index=self.index, d_steps=self.d_steps, global_step=self.global_step,
                    training=self.training, seed_generator=self.seed_generator,
                    batch_size=self._batch_size, conditional=self.conditional,
                    augment=self.augment)

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


class LogitLoss(StepLoss):
    """A loss on logits (``ganflow.Loss``: ``discriminator_loss(real_logits, fake_logits)``,
    ``generator_loss(fake_logits)``, optional ``penalty(discriminator, real, fake)``) on the
    step API. The penalty is part of ``d_loss``."""

    def __init__(self, loss):
        self.loss = loss

    def d_loss(self, step):
        value = self.loss.discriminator_loss(step.real_logits, step.fake_logits)
        penalty = getattr(self.loss, "penalty", None)
        if penalty is not None:
            value = value + penalty(_Discriminate(step), step.real, step.fake)
        return value

    def g_loss(self, step):
        return self.loss.generator_loss(step.fake_logits)


class _Discriminate:
    """D as a logits loss's ``penalty`` receives it: called on images alone, as the step's
    ``discriminate`` (the labels of a conditional run and the run's augmentations added);
    anything else (``trainable_variables``, ...) is D's own."""

    def __init__(self, step):
        self._step = step

    def __call__(self, x, training=None):
        return self._step.discriminate(x)

    def __getattr__(self, name):
        return getattr(self._step.discriminator, name)


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
